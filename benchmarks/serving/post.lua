-- wrk script: POST one v2 infer request and report a JSON summary line.
-- Arguments (after `--`): the body file, its Content-Type, and the
-- Inference-Header-Content-Length for a binary body ("" for JSON).
wrk.method = "POST"

init = function(args)
  local file = assert(io.open(args[1], "rb"))
  wrk.body = file:read("*a")  -- Lua strings are 8-bit clean: binary tensors go as they are
  file:close()
  wrk.headers["Content-Type"] = args[2]
  if args[3] and args[3] ~= "" then
    wrk.headers["Inference-Header-Content-Length"] = args[3]
  end
end

done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"non_2xx":%d,"socket_errors":%d}\n',
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    errors.status, errors.connect + errors.read + errors.write + errors.timeout))
end
