//! Settings every HTTP server of the project shares.

use std::time::Duration;

/// How long a server keeps an idle client connection open. Longer than the
/// idle timeout of the proxies and load balancers that usually sit in front
/// (60 s for AWS ALB and nginx's upstream keep-alive), so the proxy, not
/// the service, closes an idle connection: when the service closes first, a
/// request the proxy sends on that connection at the same moment fails
/// (a 502 at the proxy, `IncompleteMessage` in a Rust client). actix-web's
/// default is 5 s. Clients of ours keep their own idle timeout below this.
pub const KEEP_ALIVE: Duration = Duration::from_secs(75);
