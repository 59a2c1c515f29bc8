//! LeEngine core: the central API.
