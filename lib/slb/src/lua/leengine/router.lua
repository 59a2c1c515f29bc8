-- Routing of the lua-routed domains: one shared server per listen address
-- hands every request here. The agent pushes, through the admin endpoint,
--   r:<domain>       the domain's route, a lua table literal (leengine-slb's route.rs)
--   h:<listen>|<name> the domain serving that server name on that listen
-- so a config change is one dict write, live at the next request, without
-- a reload. What nginx does with a generated server block is redone here
-- step by step, in nginx's order: server name (exact, then longest
-- leading wildcard), location (exact, trailing-slash redirect, regexes in
-- order, longest prefix), body size, rewrites (re-search after last or a
-- changed URI, at most 10 times), proxy headers, timeouts, add_header.
local ngx_balancer = require "ngx.balancer"
local balancer = require "leengine.balancer"

local DICT = ngx.shared.leengine_upstreams
local re_match = ngx.re.match
local sub, find = string.sub, string.find

local _M = {}

-- Per worker: domain -> { text =, route = }; reparsed when the text moves.
local cache = {}
local MAX_URI_CHANGES = 10

-- A route text is data only: it runs with an empty environment.
function _M.parse(text)
    local f, err = loadstring(text, "=route")
    if not f then
        return nil, err
    end
    setfenv(f, {})
    local ok, route = pcall(f)
    if not ok or type(route) ~= "table" or type(route.locs) ~= "table" then
        return nil, "not a route table"
    end
    return route
end

-- What nginx -t would refuse in a route: regexes PCRE cannot compile.
function _M.check(route)
    for _, l in ipairs(route.locs) do
        local pats = {}
        if l.m == "r" then
            pats[#pats + 1] = l.path
        end
        for _, rw in ipairs(l.rw or {}) do
            pats[#pats + 1] = rw[1]
        end
        for _, p in ipairs(pats) do
            local _, _, err = ngx.re.find("", p, "jo")
            if err then
                return nil, "pcre_compile() failed for " .. p .. ": " .. err
            end
        end
    end
    return true
end

local function route_of(domain)
    local text = DICT:get("r:" .. domain)
    if not text then
        return nil
    end
    local c = cache[domain]
    if c and c.text == text then
        return c.route
    end
    local route = _M.parse(text)
    cache[domain] = { text = text, route = route }
    return route
end

local function domain_of(listen, host)
    local prefix = "h:" .. listen .. "|"
    local d = DICT:get(prefix .. host)
    if d then
        return d
    end
    -- Longest leading wildcard first: a.b.c tries *.b.c, then *.c.
    local rest = host
    while true do
        local dot = find(rest, ".", 1, true)
        if not dot then
            return nil
        end
        rest = sub(rest, dot + 1)
        d = DICT:get(prefix .. "*." .. rest)
        if d then
            return d
        end
    end
end

-- The proxy module's variables cannot be looked up by name (nginx
-- declares them NOHASH): computed as it does, for the domain's upstream.
local proxy_vars = {
    proxy_add_x_forwarded_for = function()
        local xff = ngx.var.http_x_forwarded_for
        if xff then
            return xff .. ", " .. ngx.var.remote_addr
        end
        return ngx.var.remote_addr
    end,
    proxy_host = function()
        return "leengine_" .. (ngx.ctx.leengine_domain or "")
    end,
    proxy_port = function()
        return "80"
    end,
}

local function var(name)
    local f = proxy_vars[name]
    if f then
        return f()
    end
    return ngx.var[name]
end

-- nginx variables ($name, ${name}) and, in a rewrite, captures ($0..$9,
-- one digit as in nginx scripts). One pass: a value is never expanded twice.
local function expand(value, captures)
    if not find(value, "$", 1, true) then
        return value
    end
    local out, i, n = {}, 1, #value
    while i <= n do
        local d = find(value, "$", i, true)
        if not d then
            out[#out + 1] = sub(value, i)
            break
        end
        out[#out + 1] = sub(value, i, d - 1)
        local c = sub(value, d + 1, d + 1)
        if c == "{" then
            local close = find(value, "}", d + 2, true) or (n + 1)
            out[#out + 1] = var(sub(value, d + 2, close - 1)) or ""
            i = close + 1
        elseif find(c, "^%d$") then
            out[#out + 1] = (captures and captures[tonumber(c)]) or ""
            i = d + 2
        else
            local s, e = find(value, "^[%w_]+", d + 1)
            if s then
                out[#out + 1] = var(sub(value, s, e)) or ""
                i = e + 1
            else
                out[#out + 1] = "$"
                i = d + 1
            end
        end
    end
    return table.concat(out)
end

-- nginx's location search (ngx_http_core_find_location). Returns the
-- location and whether nginx would answer with its trailing-slash 301.
local function find_location(route, uri)
    local best, best_len
    for _, l in ipairs(route.locs) do
        if l.m == "e" and l.path == uri then
            return l
        end
    end
    for _, l in ipairs(route.locs) do
        if l.m ~= "r" and l.slash and l.path == uri .. "/" then
            return l, true
        end
    end
    for _, l in ipairs(route.locs) do
        if l.m == "p" then
            local n = #l.path
            if (not best_len or n > best_len) and sub(uri, 1, n) == l.path then
                best, best_len = l, n
            end
        end
    end
    for _, l in ipairs(route.locs) do
        if l.m == "r" and re_match(uri, l.path, "jo") then
            return l
        end
    end
    return best
end

-- client_max_body_size: a declared length is judged at once (before any
-- rewrite, as nginx does); a chunked body is read, then judged.
local function too_big(limit)
    if limit == 0 then
        return false
    end
    local declared = tonumber(ngx.var.http_content_length)
    if declared then
        return declared > limit
    end
    if not ngx.var.http_transfer_encoding then
        return false
    end
    ngx.req.read_body()
    local data = ngx.req.get_body_data()
    if data then
        return #data > limit
    end
    local file = ngx.req.get_body_file()
    if file then
        local f = io.open(file, "rb")
        if f then
            local size = f:seek("end")
            f:close()
            return size > limit
        end
    end
    return false
end

-- One location's rewrites. Returns "redirect", "search" (URI changed:
-- search again) or nil (stay), and the new URI and args.
local function rewrite(loc, uri, args)
    local changed = false
    for _, rw in ipairs(loc.rw or {}) do
        local m = re_match(uri, rw[1], "jo")
        if m then
            local repl = rw[2]
            local keep_args = true
            if sub(repl, -1) == "?" then
                keep_args = false
                repl = sub(repl, 1, -2)
            end
            local target = expand(repl, m)
            local flag = rw[3]
            local external = find(repl, "^https?://") or find(repl, "^%$scheme")
            if flag == "redirect" or flag == "permanent" or external then
                if keep_args and args and args ~= "" then
                    target = target .. (find(target, "?", 1, true) and "&" or "?") .. args
                end
                return "redirect", target, nil, (flag == "permanent") and 301 or 302
            end
            local q = find(target, "?", 1, true)
            if q then
                local new_args = sub(target, q + 1)
                if keep_args and args and args ~= "" then
                    new_args = new_args .. "&" .. args
                end
                args = new_args
                target = sub(target, 1, q - 1)
            elseif not keep_args then
                args = nil
            end
            uri = target
            changed = true
            if flag == "last" then
                return "search", uri, args
            elseif flag == "break" then
                return nil, uri, args
            end
        end
    end
    return changed and "search" or nil, uri, args
end

-- nginx makes a relative Location absolute (absolute_redirect,
-- port_in_redirect: the Host and the listen port unless the scheme's
-- default); it does not do so for one set from lua.
local function redirect(target, status)
    if sub(target, 1, 1) == "/" then
        local scheme = ngx.var.scheme
        local port = ngx.var.server_port
        local default = (scheme == "https") and "443" or "80"
        local host = ngx.var.host
        if port ~= default then
            host = host .. ":" .. port
        end
        target = scheme .. "://" .. host .. target
    end
    return ngx.redirect(target, status)
end

-- rewrite_by_lua of the shared location.
function _M.route()
    local ctx = ngx.ctx
    local domain = domain_of(ngx.var.leengine_listen, ngx.var.host)
    local route = domain and route_of(domain)
    if not route then
        return ngx.exit(404)
    end
    ctx.leengine_domain = domain
    ctx.leengine_route = route
    local uri, args = ngx.var.uri, ngx.var.args
    local orig_uri = uri
    for _ = 0, MAX_URI_CHANGES do
        local loc, slash = find_location(route, uri)
        ctx.leengine_loc = loc
        if not loc then
            return ngx.exit(404)
        end
        if too_big(loc.body) then
            return ngx.exit(413)
        end
        if slash then
            local target = loc.path
            if args and args ~= "" then
                target = target .. "?" .. args
            end
            return redirect(target, 301)
        end
        local action, new_uri, new_args, code = rewrite(loc, uri, args)
        if action == "redirect" then
            return redirect(new_uri, code)
        end
        uri, args = new_uri, new_args
        if action ~= "search" then
            if uri ~= orig_uri then
                ngx.req.set_uri(uri, false)
            end
            if args ~= ngx.var.args then
                ngx.req.set_uri_args(args or "")
            end
            return _M.proxy_headers(loc)
        end
    end
    ngx.log(ngx.ERR, "rewrite or internal redirection cycle while processing \"", uri, "\"")
    return ngx.exit(500)
end

function _M.proxy_headers(loc)
    ngx.var.leengine_proxy_host = expand(loc.host)
    for _, h in ipairs(loc.ph or {}) do
        local v = expand(h[2])
        if v == "" then
            ngx.req.clear_header(h[1])
        else
            ngx.req.set_header(h[1], v)
        end
    end
end

-- header_filter_by_lua: add_header ... always, of the location (nginx:
-- a location with add_header of its own does not inherit the server's).
function _M.headers()
    local ctx = ngx.ctx
    local route = ctx.leengine_route
    if not route then
        return
    end
    local loc = ctx.leengine_loc
    local hs = (loc and loc.h) or route.h
    for _, h in ipairs(hs or {}) do
        local v = expand(h[2])
        if v ~= "" then
            local old = ngx.header[h[1]]
            if old == nil then
                ngx.header[h[1]] = v
            elseif type(old) == "table" then
                old[#old + 1] = v
                ngx.header[h[1]] = old
            else
                ngx.header[h[1]] = { old, v }
            end
        end
    end
end

-- balancer_by_lua of the shared upstream: the location's timeouts, then
-- the domain's peers.
function _M.balance()
    local ctx = ngx.ctx
    local loc = ctx.leengine_loc
    if loc and (loc.ct or loc.st or loc.rt) then
        local ok, err = pcall(ngx_balancer.set_timeouts, loc.ct, loc.st, loc.rt)
        if not ok then
            ngx.log(ngx.ERR, "leengine: set_timeouts: ", err)
        end
    end
    return balancer.balance(ctx.leengine_domain)
end

return _M
