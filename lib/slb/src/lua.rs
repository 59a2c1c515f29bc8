//! The lua modules nginx loads (`leengine.upstreams`: shared-dict store,
//! admin endpoint, dump loader; `leengine.balancer`: peer selection; `leengine.router`: lua
//! routing; `leengine.metrics`: per-domain request counters). The agent writes them under `{lua_dir}/leengine/`.

pub const MODULES: &[(&str, &str)] = &[
    (
        "leengine/upstreams.lua",
        include_str!("lua/leengine/upstreams.lua"),
    ),
    (
        "leengine/balancer.lua",
        include_str!("lua/leengine/balancer.lua"),
    ),
    (
        "leengine/router.lua",
        include_str!("lua/leengine/router.lua"),
    ),
    (
        "leengine/metrics.lua",
        include_str!("lua/leengine/metrics.lua"),
    ),
];
