#!/usr/bin/env bash
# Regenerates slotkeeper_serving/grpc_v2/*_pb2*.py from the vendored grpc_predict_v2.proto
# (pip install grpcio-tools). The generated code is committed; two edits after protoc:
# - the messages go to a private descriptor pool, so this server and a client
#   that brings its own copy of the `inference` package (tritonclient) can share a process;
# - the service module imports the messages relatively (protoc writes an absolute import).
set -euo pipefail
cd "$(dirname "$0")/../src/slotkeeper_serving/grpc_v2"
python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. grpc_predict_v2.proto
sed -i 's/_descriptor_pool\.Default()\.AddSerializedFile/POOL.AddSerializedFile/' grpc_predict_v2_pb2.py
sed -i 's/^_sym_db = _symbol_database.Default()$/_sym_db = _symbol_database.Default()\nPOOL = _descriptor_pool.DescriptorPool()  # private: see hack\/gen-grpc.sh/' grpc_predict_v2_pb2.py
sed -i 's/^import grpc_predict_v2_pb2 as /from . import grpc_predict_v2_pb2 as /' grpc_predict_v2_pb2_grpc.py
grep -q 'POOL.AddSerializedFile' grpc_predict_v2_pb2.py
