-- Per-domain request counters for Prometheus, kept in their own shared
-- dict so they never compete with peers for space. log(): one request
-- (log_by_lua, http level); render(): the Prometheus text (admin server).
-- A full dict drops counts (logged once per worker), never requests.
--
-- Each worker adds into plain Lua tables and flushes them into the dict
-- every FLUSH seconds: a request costs table updates — no locked
-- shared-dict write, no string built, no pattern matched for a single
-- upstream try (hack/bench/lb-metrics.sh measured each of these).
-- So a scrape lags by up to FLUSH, and a worker killed without exiting
-- loses its last FLUSH of counts.

local DICT = ngx.shared.leengine_metrics
local _M = {}

-- Upstream latency buckets (seconds), as Prometheus' defaults.
local BUCKETS = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10 }
local FLUSH = 1
local warned = false
local pending = {}
local timer = false

-- pending[domain] = { r = { [status class] = n }, b = { [bucket] = n }, s = seconds }:
-- a request touches tables only; the dict's string keys are built at flush.
local function add(key, v)
    local _, err = DICT:incr(key, v, 0)
    if err and not warned then
        warned = true
        ngx.log(ngx.ERR, "leengine: metrics not counted: shared dict ", err)
    end
end

local function flush()
    -- Also at worker exit (premature): the counts still go to the dict.
    local p = pending
    pending = {}
    for domain, c in pairs(p) do
        for class, n in pairs(c.r) do
            add("r\t" .. domain .. "\t" .. class .. "xx", n)
        end
        for b, n in pairs(c.b) do
            add("b\t" .. domain .. "\t" .. b, n)
        end
        if next(c.b) then
            add("s\t" .. domain, c.s)
        end
    end
end

local function counts(domain)
    local c = pending[domain]
    if c then
        return c
    end
    if not timer then
        local ok, err = ngx.timer.every(FLUSH, flush)
        timer = ok or false
        if not ok then
            -- No timer (too many pending): write the earlier requests'
            -- counts through now; this one's go with the next request.
            ngx.log(ngx.WARN, "leengine: metrics flush timer: ", err)
            flush()
        end
    end
    c = { r = {}, b = {}, s = 0 }
    pending[domain] = c
    return c
end

-- "0.010" for one try (the common case: tonumber, no pattern); "0.010,
-- 0.003 : 0.002" for several: every try, summed. "-": no upstream.
local function upstream_seconds(text)
    if not text then
        return nil
    end
    local one = tonumber(text)
    if one then
        return one
    end
    local total, any = 0, false
    for n in string.gmatch(text, "[%d%.]+") do
        local v = tonumber(n)
        if v then
            total, any = total + v, true
        end
    end
    return any and total or nil
end

function _M.log(ctx)
    -- Lua routing names the domain in ngx.ctx; a generated server block
    -- names it in its `set $leengine_domain`.
    local domain = (ctx or ngx.ctx).leengine_domain or ngx.var.leengine_domain
    if not domain or domain == "" then
        return
    end
    local c = counts(domain)
    local class = math.floor((ngx.status or 0) / 100)
    c.r[class] = (c.r[class] or 0) + 1
    local t = upstream_seconds(ngx.var.upstream_response_time)
    if not t then
        return
    end
    local b = #BUCKETS + 1
    for i = 1, #BUCKETS do
        if t <= BUCKETS[i] then
            b = i
            break
        end
    end
    c.b[b] = (c.b[b] or 0) + 1
    c.s = c.s + t
end

local function label(v)
    return (string.gsub(v, '[\\"\n]', { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" }))
end

function _M.render()
    local keys = DICT:get_keys(0)
    table.sort(keys)
    local out, hist = {}, {}
    out[#out + 1] = "# HELP leengine_lb_requests_total Requests by LB domain and status class."
    out[#out + 1] = "# TYPE leengine_lb_requests_total counter"
    for _, k in ipairs(keys) do
        local kind, domain, rest = string.match(k, "^(%a)\t([^\t]+)\t?(.*)$")
        local v = DICT:get(k)
        if kind == "r" and v then
            out[#out + 1] = string.format('leengine_lb_requests_total{domain="%s",class="%s"} %s',
                label(domain), rest, v)
        elseif kind == "b" and v then
            hist[domain] = hist[domain] or { buckets = {}, sum = 0 }
            hist[domain].buckets[tonumber(rest)] = v
        elseif kind == "s" and v then
            hist[domain] = hist[domain] or { buckets = {}, sum = 0 }
            hist[domain].sum = v
        end
    end
    out[#out + 1] = "# HELP leengine_lb_upstream_response_seconds Upstream time of each request (all tries)."
    out[#out + 1] = "# TYPE leengine_lb_upstream_response_seconds histogram"
    local domains = {}
    for d in pairs(hist) do
        domains[#domains + 1] = d
    end
    table.sort(domains)
    for _, d in ipairs(domains) do
        local h, acc, l = hist[d], 0, label(d)
        for i = 1, #BUCKETS + 1 do
            acc = acc + (h.buckets[i] or 0)
            local le = BUCKETS[i] and tostring(BUCKETS[i]) or "+Inf"
            out[#out + 1] = string.format('leengine_lb_upstream_response_seconds_bucket{domain="%s",le="%s"} %d',
                l, le, acc)
        end
        out[#out + 1] = string.format('leengine_lb_upstream_response_seconds_sum{domain="%s"} %.6f', l, h.sum)
        out[#out + 1] = string.format('leengine_lb_upstream_response_seconds_count{domain="%s"} %d', l, acc)
    end
    ngx.header["Content-Type"] = "text/plain; version=0.0.4"
    ngx.print(table.concat(out, "\n"), "\n")
end

return _M
