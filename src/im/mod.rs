//! The push system (goim-compatible comet, logic and job roles).
//!
//! It may import `libs` and the `topo` kernel, never `proxy`: the push roles are
//! ordinary RESP clients of the proxy cluster. The roles arrive in a later issue;
//! this module only reserves their place in the layout.
