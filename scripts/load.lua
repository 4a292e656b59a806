-- wrk script for the service load run: each request POSTs one text to /embed, cycling
-- through the texts of one kind in ../shared/bench/texts.jsonl (KIND env: short | long).
-- Usage: wrk -t2 -c32 -d30s --latency -s scripts/load.lua http://127.0.0.1:PORT/embed
local kind = os.getenv("KIND") or "short"
local path = os.getenv("TEXTS") or "../shared/bench/texts.jsonl"
local bodies = {}
for line in io.lines(path) do
  if line:find('"kind": *"' .. kind .. '"') then
    -- The file's "text" value is already a JSON string: reuse it verbatim, up to the
    -- first unescaped quote.
    local s = line:find('"text": *"')
    if s then
      local open = line:find('"', line:find(':', s) + 1, true)
      local j = open + 1
      while line:sub(j, j) ~= '"' do
        if line:sub(j, j) == "\\" then j = j + 1 end
        j = j + 1
      end
      bodies[#bodies + 1] = '{"inputs": ' .. line:sub(open, j) .. '}'
    end
  end
end
assert(#bodies > 0, "no texts of kind " .. kind .. " in " .. path)
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = i % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[i])
end
done = function(summary, latency, requests)
  io.write(string.format("texts=%d non200=%d p50_ms=%.1f p99_ms=%.1f\n",
    #bodies, summary.errors.status, latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
