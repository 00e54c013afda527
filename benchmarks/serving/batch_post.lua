-- wrk script: POST v2 infer requests read from a file (one JSON body per line), cycling through them,
-- and report a JSON summary line. Usage: wrk ... -s batch_post.lua URL -- BODIES_FILE
local bodies = {}
local next_body = 0

init = function(args)
  for line in io.lines(args[1]) do
    bodies[#bodies + 1] = line
  end
end

request = function()
  next_body = next_body % #bodies + 1
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, bodies[next_body])
end

done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"non_2xx":%d,"socket_errors":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    errors.status, errors.connect + errors.read + errors.write + errors.timeout))
end
