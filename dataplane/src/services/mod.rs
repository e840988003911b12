//! Service load balancing, agent side: Services and endpoints → the service maps
//! (`load_balancer`), and closing UDP sockets connected to removed backends
//! (`sock_destroy`). Resolution and Maglev are pure and live in `moat-services`.
mod load_balancer;
pub mod sock_destroy;

pub use load_balancer::LoadBalancer;
