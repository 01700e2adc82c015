-- Postback load: each request converts an existing click with a new, unique txid.
-- Usage: wrk ... -s postback.lua http://host:port -- CLICKIDS_FILE TOKEN RUN
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "") .. "common.lua")

function init(args)
  ids = {}
  for line in io.lines(args[1]) do
    ids[#ids + 1] = line
  end
  token = args[2]
  run = args[3] or "0"
  counter = 0
end

function request()
  counter = counter + 1
  local clickid = ids[((counter * 7 + tid) % #ids) + 1]
  return wrk.format("GET", "/postback?clickid=" .. clickid
    .. "&payout=1.2500&status=approved&txid=r" .. run .. "t" .. tid .. "-" .. counter
    .. "&token=" .. token)
end
