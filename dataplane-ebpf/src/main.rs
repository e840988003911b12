//! Moat's eBPF programs. Built for `bpfel-unknown-none` by `dataplane/build.rs`.
//!
//! Attachment (tcx, one pair per pod, on the host-side veth):
//!
//! ```text
//!   pod netns            │ root (node) netns
//!   eth0 ── veth peer ── │ ── lxcXXXX ingress: from_container  (packets the pod sends)
//!                        │            egress:  to_container    (packets the stack routes to the pod)
//! ```
#![no_std]
#![no_main]

mod conntrack;
mod events;
mod http;
mod maps;
mod nodeport;
mod packet;
mod pod;
mod policy;
mod reject;
mod select;
mod sock;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path; this is never called.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual BSD/GPL\0";
