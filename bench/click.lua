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
  return wrk.format("GET", path
    .. "?external_id=ext" .. tid .. "x" .. counter
    .. "&sub1=zone" .. (counter % 997)
    .. "&sub2=creative" .. (counter % 13)
    .. "&sub3=US&sub4=android&sub5=banner-300x250"
    .. "&cost=0.0042", headers)
end
