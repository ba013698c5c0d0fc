//! Backends: how this host's end of the overlay looks in the kernel. The VXLAN backend owns a
//! device (`flannel.<VNI>`) that it creates or adopts; host-gw needs no device. What each
//! remote lease calls for is computed in [`crate::reconcile`].

pub mod vxlan;
