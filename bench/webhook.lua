-- webhook.lua — wrk script: cycles through pre-signed WhatsApp webhook
-- requests, one per line of the file given after --: "SIGNATURE<TAB>BODY".
local reqs = {}
local n = 0
local i = 0

function init(args)
  for line in io.lines(args[1]) do
    local sig, body = line:match("^([^\t]+)\t(.*)$")
    n = n + 1
    reqs[n] = wrk.format("POST", "/whatsapp",
      { ["Content-Type"] = "application/json", ["X-Hub-Signature-256"] = "sha256=" .. sig }, body)
  end
  -- Threads start at different places so that they do not send the same ones.
  i = math.random(n)
end

function request()
  i = i % n + 1
  return reqs[i]
end
