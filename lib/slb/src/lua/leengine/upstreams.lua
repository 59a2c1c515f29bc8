-- Peers of every domain, kept in the shared dict so all workers see one
-- state and it survives reloads (nginx keeps a zone across HUP when its
-- name and size are unchanged). Written only by the local admin endpoint
-- (the agent, which proves itself with the admin secret) and by load_dump
-- at (re)start.
--
-- Keys: u:<domain> = wire-format section, v:<domain> = version counter the
-- balancer compares to its per-worker cache, r:<domain> and h:<listen>|<name>
-- = the lua router's routes and server names (router.lua), gen = token of
-- the last full push.
--
-- Every write is a safe_* one: a full dict refuses the write instead of
-- evicting the least recently used entries (which would silently drop the
-- peers of some other domain). Refusals are answered with 507 so the
-- agent can report them.
local bit = require "bit"

local DICT = ngx.shared.leengine_upstreams
local SECRET_HEADER = "X-Leengine-Admin-Secret"

local _M = {}

-- Read by init_by_lua in the master (root) and inherited by the workers,
-- which run unprivileged and could not read the file themselves.
local secret = nil

-- Splits a wire-format body into items {key=, text=} (a write) or
-- {key=, remove=true}. Keys: u:<domain> peers, r:<domain> route,
-- h:<listen>|<name> the domain serving a server name.
local function sections(body)
    local out, cur = {}, nil
    for line in string.gmatch(body, "[^\n]+") do
        local c = string.sub(line, 1, 1)
        if c == "@" then
            local domain = string.match(line, "^@(%S+) %S+ %S+$")
            if not domain then
                return nil, "bad section header: " .. line
            end
            cur = { key = "u:" .. domain, lines = { line } }
            out[#out + 1] = cur
        elseif c == "!" then
            out[#out + 1] = { key = "u:" .. string.sub(line, 2), remove = true }
            cur = nil
        elseif c == "=" then
            local domain, text = string.match(line, "^=(%S+) (.+)$")
            if not domain then
                return nil, "bad route line: " .. line
            end
            out[#out + 1] = { key = "r:" .. domain, lines = { text }, route = true }
            cur = nil
        elseif c == "~" then
            out[#out + 1] = { key = "r:" .. string.sub(line, 2), remove = true }
            cur = nil
        elseif c == ">" then
            local host, domain = string.match(line, "^>(%S+) (%S+)$")
            if not host then
                return nil, "bad host line: " .. line
            end
            out[#out + 1] = { key = "h:" .. host, lines = { domain } }
            cur = nil
        elseif c == "<" then
            out[#out + 1] = { key = "h:" .. string.sub(line, 2), remove = true }
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

-- incr that never evicts: plain incr on an existing key, safe_add to
-- create it (incr's own init argument inserts forcibly).
function _M.safe_incr(key, delta, ttl)
    local n, err = DICT:incr(key, delta)
    if n or err ~= "not found" then
        return n, err
    end
    local ok, aerr = DICT:safe_add(key, delta, ttl or 0)
    if ok then
        return delta
    end
    if aerr == "exists" then
        return DICT:incr(key, delta)
    end
    return nil, aerr
end

-- Stores one item. A refused write of a changed size has already freed
-- the old value (that is how the dict replaces entries): put the old one
-- back so the domain keeps its previous state. Peers also move their
-- version counter (v:<domain>), which the balancer's cache follows.
local function store(key, text)
    local old = DICT:get(key)
    local ok, err = DICT:safe_set(key, text)
    if not ok then
        if old then
            DICT:safe_set(key, old)
        end
        return nil, err
    end
    if string.sub(key, 1, 2) ~= "u:" then
        return true
    end
    local _, verr = _M.safe_incr("v:" .. string.sub(key, 3), 1)
    if verr then
        -- Without its version the workers would not notice the new peers.
        if old then
            DICT:safe_set(key, old)
        else
            DICT:delete(key)
        end
        return nil, verr
    end
    return true
end

local function remove(key)
    DICT:delete(key)
    if string.sub(key, 1, 2) == "u:" then
        _M.safe_incr("v:" .. string.sub(key, 3), 1)
    end
end

-- Applies a body; replace=true also drops items the body does not name.
-- Everything is parsed (and every route checked) before anything is
-- written: a bad body changes nothing. Returns the number of items and
-- the refused ones, "<key> <reason>": no room in the dict (their previous
-- state stays) or a route the router cannot use (nginx -t's verdict).
function _M.apply(body, replace)
    local secs, err = sections(body)
    if not secs then
        return nil, err
    end
    local refused = {}
    local router = require "leengine.router"
    for _, s in ipairs(secs) do
        if s.route then
            local route, err = router.parse(s.lines[1])
            if route then
                _, err = router.check(route)
            end
            if err then
                refused[#refused + 1] = "refused " .. s.key .. " " .. tostring(err)
                s.skip = true
            end
        end
    end
    if replace then
        local keep = {}
        for _, s in ipairs(secs) do
            if not s.remove then
                keep[s.key] = true
            end
        end
        for _, k in ipairs(DICT:get_keys(0)) do
            local kind = string.sub(k, 1, 2)
            if (kind == "u:" or kind == "r:" or kind == "h:") and not keep[k] then
                remove(k)
            end
        end
    end
    for _, s in ipairs(secs) do
        if s.remove then
            remove(s.key)
        elseif not s.skip then
            local ok, serr = store(s.key, table.concat(s.lines, "\n"))
            if not ok then
                refused[#refused + 1] = "full " .. s.key .. " " .. tostring(serr)
            end
        end
    end
    return #secs, refused
end

function _M.dump()
    local keys = DICT:get_keys(0)
    table.sort(keys)
    local parts = { "#gen " .. (DICT:get("gen") or "") }
    for _, k in ipairs(keys) do
        local kind = string.sub(k, 1, 2)
        if kind == "u:" then
            parts[#parts + 1] = DICT:get(k)
        elseif kind == "r:" then
            parts[#parts + 1] = "=" .. string.sub(k, 3) .. " " .. DICT:get(k)
        elseif kind == "h:" then
            parts[#parts + 1] = ">" .. string.sub(k, 3) .. " " .. DICT:get(k)
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

-- Compares in time independent of where the strings differ.
local function same_secret(given)
    if type(given) ~= "string" or not secret or #given ~= #secret then
        return false
    end
    local diff = 0
    for i = 1, #secret do
        diff = bit.bor(diff, bit.bxor(string.byte(given, i), string.byte(secret, i)))
    end
    return diff == 0
end

-- content_by_lua handler of the admin location (127.0.0.1 only, and every
-- request must carry the admin secret: any local process can connect).
-- GET: current state (?only=gen: just the token; ?only=generation: the
-- config generation these workers run). POST ?mode=replace|merge[&gen=token]: wire body.
function _M.admin()
    if not same_secret(ngx.req.get_headers()[SECRET_HEADER]) then
        ngx.status = 403
        ngx.say("missing or wrong ", SECRET_HEADER)
        return
    end
    local method = ngx.req.get_method()
    if method == "GET" then
        if ngx.var.arg_only == "gen" then
            ngx.say(DICT:get("gen") or "")
            return
        end
        if ngx.var.arg_only == "generation" then
            ngx.say(ngx.var.leengine_generation or "")
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
    local n, full = _M.apply(body, ngx.var.arg_mode == "replace")
    if not n then
        ngx.status = 400
        ngx.say(full)
        return
    end
    if ngx.var.arg_gen then
        local ok, err = DICT:safe_set("gen", ngx.var.arg_gen)
        if not ok then
            full[#full + 1] = "full - " .. tostring(err)
        end
    end
    if #full > 0 then
        ngx.log(ngx.ERR, "leengine: refused: ", table.concat(full, ", "))
        ngx.status = 507
        for _, f in ipairs(full) do
            ngx.say(f)
        end
        return
    end
    ngx.say("ok ", n)
end

-- init_by_lua: the secret the agent keeps in its state directory. Without
-- it every admin request is refused (fail closed).
function _M.load_secret(path)
    secret = nil
    local f = io.open(path, "r")
    if not f then
        ngx.log(ngx.ERR, "leengine: no admin secret at ", path, "; the admin endpoint refuses everything")
        return
    end
    local text = string.match(f:read("*a") or "", "^%s*(%S+)%s*$")
    f:close()
    secret = text
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
    local n, full = _M.apply(body, true)
    if not n then
        ngx.log(ngx.ERR, "leengine: ignoring upstream dump ", path, ": ", full)
        return
    end
    if #full > 0 then
        ngx.log(ngx.ERR, "leengine: loading ", path, ", refused: ", table.concat(full, ", "))
    end
    DICT:safe_set("gen", "dump")
end

return _M
