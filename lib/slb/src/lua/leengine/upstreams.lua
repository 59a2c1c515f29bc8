-- Peers of every domain, kept in the shared dict so all workers see one
-- state and it survives reloads (nginx keeps a zone across HUP when its
-- name and size are unchanged). Written only by the local admin endpoint
-- (the agent) and by load_dump at (re)start.
--
-- Keys: u:<domain> = wire-format section, v:<domain> = version counter the
-- balancer compares to its per-worker cache, gen = token of the last full push.
local DICT = ngx.shared.leengine_upstreams

local _M = {}

-- Splits a wire-format body into {domain=, text=} / {domain=, remove=true}.
local function sections(body)
    local out, cur = {}, nil
    for line in string.gmatch(body, "[^\n]+") do
        local c = string.sub(line, 1, 1)
        if c == "@" then
            local domain = string.match(line, "^@(%S+) %S+ %S+$")
            if not domain then
                return nil, "bad section header: " .. line
            end
            cur = { domain = domain, lines = { line } }
            out[#out + 1] = cur
        elseif c == "!" then
            out[#out + 1] = { domain = string.sub(line, 2), remove = true }
            cur = nil
        elseif cur then
            if not string.match(line, "^%S+ %d+ %d+ %d+ [01]$") then
                return nil, "bad server line: " .. line
            end
            cur.lines[#cur.lines + 1] = line
        else
            return nil, "server line outside a section: " .. line
        end
    end
    return out
end

-- Applies a body; replace=true also drops domains the body does not name.
-- Everything is parsed before anything is written: a bad body changes nothing.
function _M.apply(body, replace)
    local secs, err = sections(body)
    if not secs then
        return nil, err
    end
    if replace then
        local keep = {}
        for _, s in ipairs(secs) do
            if not s.remove then
                keep[s.domain] = true
            end
        end
        for _, k in ipairs(DICT:get_keys(0)) do
            local d = string.match(k, "^u:(.*)$")
            if d and not keep[d] then
                DICT:delete(k)
                DICT:incr("v:" .. d, 1, 0)
            end
        end
    end
    for _, s in ipairs(secs) do
        if s.remove then
            DICT:delete("u:" .. s.domain)
        else
            local ok, serr = DICT:set("u:" .. s.domain, table.concat(s.lines, "\n"))
            if not ok then
                return nil, "shared dict: " .. tostring(serr)
            end
        end
        DICT:incr("v:" .. s.domain, 1, 0)
    end
    return #secs
end

function _M.dump()
    local keys = DICT:get_keys(0)
    table.sort(keys)
    local parts = { "#gen " .. (DICT:get("gen") or "") }
    for _, k in ipairs(keys) do
        if string.sub(k, 1, 2) == "u:" then
            parts[#parts + 1] = DICT:get(k)
        end
    end
    -- Peers taken out by max_fails, for operators (and tests) to see.
    for _, k in ipairs(keys) do
        if string.sub(k, 1, 2) == "d:" then
            parts[#parts + 1] = "#down " .. string.sub(k, 3)
        end
    end
    return table.concat(parts, "\n") .. "\n"
end

-- content_by_lua handler of the admin location (127.0.0.1 only).
-- GET: current state (?only=gen: just the token). POST ?mode=replace|merge[&gen=token]: wire body.
function _M.admin()
    local method = ngx.req.get_method()
    if method == "GET" then
        if ngx.var.arg_only == "gen" then
            ngx.say(DICT:get("gen") or "")
            return
        end
        ngx.print(_M.dump())
        return
    end
    if method ~= "POST" then
        return ngx.exit(405)
    end
    ngx.req.read_body()
    local body = ngx.req.get_body_data() or ""
    local n, err = _M.apply(body, ngx.var.arg_mode == "replace")
    if not n then
        ngx.status = 400
        ngx.say(err)
        return
    end
    if ngx.var.arg_gen then
        DICT:set("gen", ngx.var.arg_gen)
    end
    ngx.say("ok ", n)
end

-- init_by_lua: a (re)started nginx serves the agent's last pushed state
-- even before the agent (or etcd) is reachable.
function _M.load_dump(path)
    local f = io.open(path, "r")
    if not f then
        return
    end
    local body = f:read("*a")
    f:close()
    local n, err = _M.apply(body, true)
    if not n then
        ngx.log(ngx.ERR, "leengine: ignoring upstream dump ", path, ": ", err)
        return
    end
    DICT:set("gen", "dump")
end

return _M
