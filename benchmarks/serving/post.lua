-- wrk script: POST one v2 infer request (1 row x 4 features) and report a JSON summary line.
wrk.method = "POST"
wrk.body = '{"inputs":[{"name":"input-0","shape":[1,4],"datatype":"FP64","data":[0.35,-1.2,0.8,2.1]}]}'
wrk.headers["Content-Type"] = "application/json"

done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"non_2xx":%d,"socket_errors":%d}\n',
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    errors.status, errors.connect + errors.read + errors.write + errors.timeout))
end
