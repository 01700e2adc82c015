-- Shared by the load scripts: a number per wrk thread, and wrk's summary as one JSON
-- line for run.py.
local next_id = 1

function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
end

-- A push or pop source's click: an external id and sub1..sub5, with a cost.
function click_url(path, counter)
  return path
    .. "?external_id=ext" .. tid .. "x" .. counter
    .. "&sub1=zone" .. (counter % 997)
    .. "&sub2=creative" .. (counter % 13)
    .. "&sub3=US&sub4=android&sub5=banner-300x250"
    .. "&cost=0.0042"
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, '
      .. '"errors": %d, "non_2xx_3xx": %d}\n',
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
