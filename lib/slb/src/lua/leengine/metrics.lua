-- Per-domain request counters for Prometheus, kept in their own shared
-- dict so they never compete with peers for space. log(): one request
-- (log_by_lua, http level); render(): the Prometheus text (admin server).
-- A full dict drops counts (logged once per worker), never requests.
--
-- Each worker adds into a plain Lua table and flushes it into the dict
-- every FLUSH seconds: a request costs table updates, not three locked
-- shared-dict writes (hack/bench/lb-metrics.sh measured the difference).
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

local function flush()
    -- Also at worker exit (premature): the counts still go to the dict.
    local p = pending
    pending = {}
    for key, v in pairs(p) do
        local _, err = DICT:incr(key, v, 0)
        if err and not warned then
            warned = true
            ngx.log(ngx.ERR, "leengine: metrics not counted: shared dict ", err)
        end
    end
end

local function incr(key, v)
    pending[key] = (pending[key] or 0) + v
    if not timer then
        local ok, err = ngx.timer.every(FLUSH, flush)
        timer = ok or false
        if not ok then
            -- No timer (too many pending): write through this time.
            ngx.log(ngx.WARN, "leengine: metrics flush timer: ", err)
            flush()
        end
    end
end

-- "0.010, 0.003 : 0.002": every try of the request, summed.
local function upstream_seconds(text)
    if not text then
        return nil
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

function _M.log()
    -- Lua routing names the domain in ngx.ctx; a generated server block
    -- names it in its `set $leengine_domain`.
    local domain = ngx.ctx.leengine_domain or ngx.var.leengine_domain
    if not domain or domain == "" then
        return
    end
    local status = ngx.status or 0
    local class = math.floor(status / 100) .. "xx"
    incr("r\t" .. domain .. "\t" .. class, 1)
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
    incr("b\t" .. domain .. "\t" .. b, 1)
    incr("s\t" .. domain, t)
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
