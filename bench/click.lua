-- Click load: one browser, one address, a direct link with an external id and sub1..sub5, as a push or pop source sends it.
-- Usage: wrk ... -s click.lua http://host:port -- /c/CAMPAIGN_KEY
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "") .. "common.lua")

function init(args)
  path = args[1]
  counter = 0
end

local headers = {["User-Agent"] = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36"}

function request()
  counter = counter + 1
  return wrk.format("GET", click_url(path, counter), headers)
end
