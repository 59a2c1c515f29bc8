//! The lua modules nginx loads (`leengine.upstreams`: shared-dict store,
//! admin endpoint, dump loader; `leengine.balancer`: peer selection). The
//! agent writes them under `{lua_dir}/leengine/`.

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
        "leengine/metrics.lua",
        include_str!("lua/leengine/metrics.lua"),
    ),
];
