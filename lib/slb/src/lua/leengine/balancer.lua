-- Peer selection for every upstream (balancer_by_lua). Each worker caches
-- the parsed peers of a domain and re-parses only when v:<domain> moves.
-- Failure marks (f:, d:) and active counts (c:) live in the shared dict so
-- all workers agree, like an nginx upstream with a `zone`.
-- Writes never evict (safe_*): a full dict loses a failure mark, never
-- the peers of a domain.
local ngx_balancer = require "ngx.balancer"
local upstreams = require "leengine.upstreams"
local DICT = ngx.shared.leengine_upstreams

local _M = {}
local cache = {}
local RING_POINTS = 40 -- per unit of weight

local function parse(text)
    local peers, method, key = {}, "rr", nil
    for line in string.gmatch(text, "[^\n]+") do
        if string.sub(line, 1, 1) == "@" then
            local m, k = string.match(line, "^@%S+ (%S+) (%S+)$")
            method = m or "rr"
            if k and k ~= "-" then
                key = string.sub(k, 2)
            end
        else
            local addr, w, mf, ft, down = string.match(line, "^(%S+) (%d+) (%d+) (%d+) ([01])$")
            if addr and down == "0" then
                local host, port = string.match(addr, "^(.*):(%d+)$")
                host = string.match(host, "^%[(.*)%]$") or host
                peers[#peers + 1] = {
                    addr = addr, host = host, port = tonumber(port), weight = tonumber(w),
                    max_fails = tonumber(mf), fail_timeout = tonumber(ft), cw = 0,
                }
            end
        end
    end
    return peers, method, key
end

local function build_ring(peers)
    local ring = {}
    for i, p in ipairs(peers) do
        for j = 1, RING_POINTS * p.weight do
            ring[#ring + 1] = { ngx.crc32_long(p.addr .. "#" .. j), i }
        end
    end
    table.sort(ring, function(a, b) return a[1] < b[1] end)
    return ring
end

local function state(domain)
    local ver = DICT:get("v:" .. domain)
    local st = cache[domain]
    if st and st.ver == ver then
        return st
    end
    local text = DICT:get("u:" .. domain)
    if not text then
        cache[domain] = nil
        return nil
    end
    local peers, method, key = parse(text)
    st = { ver = ver, peers = peers, method = method, key = key }
    if method == "hash" then
        st.ring = build_ring(peers)
    end
    cache[domain] = st
    return st
end

local function peer_key(prefix, domain, p)
    return prefix .. domain .. "|" .. p.addr
end

local function usable(domain, p, tried)
    if tried[p.addr] then
        return false
    end
    return p.max_fails == 0 or not DICT:get(peer_key("d:", domain, p))
end

-- nginx semantics: max_fails failures within fail_timeout take the peer
-- out for fail_timeout.
local function record_failure(domain, p)
    if p.max_fails == 0 then
        return
    end
    local n, err = upstreams.safe_incr(peer_key("f:", domain, p), 1, p.fail_timeout)
    if n and n >= p.max_fails then
        n, err = DICT:safe_set(peer_key("d:", domain, p), true, p.fail_timeout)
        DICT:delete(peer_key("f:", domain, p))
    end
    if not n then
        ngx.log(ngx.ERR, "leengine: failure of ", p.addr, " not recorded: shared dict ", err)
    end
end

-- Smooth weighted round robin (the algorithm nginx uses).
local function pick_rr(st, ok)
    local total, best = 0, nil
    for _, p in ipairs(st.peers) do
        if ok(p) then
            p.cw = p.cw + p.weight
            total = total + p.weight
            if not best or p.cw > best.cw then
                best = p
            end
        end
    end
    if best then
        best.cw = best.cw - total
    end
    return best
end

local function pick_least_conn(st, domain, ok)
    local n = #st.peers
    st.start = ((st.start or 0) % n) + 1
    local best, best_load
    for i = 0, n - 1 do
        local p = st.peers[((st.start + i - 1) % n) + 1]
        if ok(p) then
            local load = (DICT:get(peer_key("c:", domain, p)) or 0) / p.weight
            if not best or load < best_load then
                best, best_load = p, load
            end
        end
    end
    return best
end

local function pick_hash(st, ok)
    local ring = st.ring
    if #ring == 0 then
        return nil
    end
    local h = ngx.crc32_long(tostring(ngx.var[st.key] or ""))
    local lo, hi = 1, #ring
    while lo < hi do
        local mid = math.floor((lo + hi) / 2)
        if ring[mid][1] < h then
            lo = mid + 1
        else
            hi = mid
        end
    end
    if ring[lo][1] < h then
        lo = 1
    end
    for i = 0, #ring - 1 do
        local p = st.peers[ring[((lo + i - 1) % #ring) + 1][2]]
        if ok(p) then
            return p
        end
    end
    return nil
end

local function pick(st, domain, ok)
    if st.method == "least_conn" then
        return pick_least_conn(st, domain, ok)
    elseif st.method == "hash" then
        return pick_hash(st, ok)
    end
    return pick_rr(st, ok)
end

local function release(ctx)
    if ctx.leengine_conn then
        DICT:incr(ctx.leengine_conn, -1)
        ctx.leengine_conn = nil
    end
end

function _M.balance(domain)
    local ctx = ngx.ctx
    local st = state(domain)
    if not st or #st.peers == 0 then
        -- No peer set: nginx falls back to the placeholder server, whose
        -- connect fails at once, and answers 502 like any dead upstream.
        ngx.log(ngx.ERR, "leengine: no upstream servers for ", domain)
        return
    end
    local tried = ctx.leengine_tried
    if tried then
        -- nginx calls us again only after the previous peer failed.
        if ctx.leengine_peer then
            record_failure(domain, ctx.leengine_peer)
        end
        release(ctx)
    else
        tried = {}
        ctx.leengine_tried = tried
        if #st.peers > 1 then
            ngx_balancer.set_more_tries(#st.peers - 1)
        end
    end
    local p = pick(st, domain, function(q) return usable(domain, q, tried) end)
    if not p then
        -- Every untried peer is marked down: like nginx, try one anyway
        -- rather than fail a request that might succeed.
        p = pick(st, domain, function(q) return not tried[q.addr] end)
    end
    if not p then
        return ngx.exit(ngx.ERROR)
    end
    tried[p.addr] = true
    ctx.leengine_peer = p
    if st.method == "least_conn" then
        local key = peer_key("c:", domain, p)
        local _, err = upstreams.safe_incr(key, 1)
        if err then
            ngx.log(ngx.ERR, "leengine: active count of ", p.addr, " not kept: shared dict ", err)
        else
            ctx.leengine_conn = key
        end
    end
    local ok, err = ngx_balancer.set_current_peer(p.host, p.port)
    if not ok then
        ngx.log(ngx.ERR, "leengine: set_current_peer ", p.addr, ": ", err)
        return ngx.exit(ngx.ERROR)
    end
end

-- log_by_lua (http level): end of request. `ctx`: the request's ngx.ctx,
-- read once by the caller for both log handlers (each read is a lookup).
function _M.log(ctx)
    release(ctx or ngx.ctx)
end

return _M
