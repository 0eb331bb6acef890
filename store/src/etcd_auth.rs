//! One etcd identity per component, each allowed only the keys it writes.
//!
//! With one shared identity, whoever took a shard could rewrite routes, rooms and
//! password hashes. So etcd runs with authentication on and:
//! * `tutti-operator` reads and writes the whole prefix (it places rooms and drives
//!   cascades);
//! * `tutti-gateway` reads it, and writes only `rooms/`, `broadcasts/` (its rooms file,
//!   rooms created on first join) and `latency/` (participants' round trips);
//! * `tutti-shard` reads it, and writes only `shards/` (its heartbeat).
//!
//! [`bootstrap`] sets this up, idempotently, as etcd's root user: run at install and on
//! every upgrade (the chart's hook Job runs `tutti-operator etcd-auth`), it creates what
//! is missing, resets the components' passwords to the given ones and turns auth on. Root
//! keeps the password it was created with.

use crate::EtcdConfig;
use etcd_client::{Client, Permission};

/// The user and role of the operator.
pub const OPERATOR: &str = "tutti-operator";
/// The user and role of gateways.
pub const GATEWAY: &str = "tutti-gateway";
/// The user and role of shards.
pub const SHARD: &str = "tutti-shard";

/// The components' passwords.
#[derive(Debug, Clone)]
pub struct ComponentPasswords {
    /// The operator's.
    pub operator: String,
    /// Gateways'.
    pub gateway: String,
    /// Shards'.
    pub shard: String,
}

/// Key prefixes (under the store's prefix) a role may write, beyond reading everything.
pub fn writable(role: &str) -> &'static [&'static str] {
    match role {
        OPERATOR => &[""],
        GATEWAY => &["rooms/", "broadcasts/", "latency/"],
        SHARD => &["shards/"],
        _ => &[],
    }
}

fn exists(err: &etcd_client::Error) -> bool {
    err.to_string().contains("already exists")
}

/// Creates the root user (with `root_password`), the three roles and users, and enables
/// authentication. `config` says where etcd is (its own user is ignored: this connects as
/// root once auth is on, with no user before).
pub async fn bootstrap(
    config: &EtcdConfig,
    root_password: &str,
    passwords: &ComponentPasswords,
) -> Result<(), String> {
    let mut as_root = config.clone();
    as_root.user = Some(("root".to_owned(), root_password.to_owned()));
    let mut client =
        match Client::connect(&as_root.endpoints, Some(as_root.connect_options()?)).await {
            Ok(client) => client,
            // Before the first run etcd has no auth and refuses to authenticate anyone.
            Err(err) if err.to_string().contains("authentication is not enabled") => {
                let mut open = config.clone();
                open.user = None;
                Client::connect(&open.endpoints, Some(open.connect_options()?))
                    .await
                    .map_err(|e| format!("etcd: {e}"))?
            }
            Err(err) => return Err(format!("etcd as root: {err}")),
        };
    let fail = |what: &str, err: etcd_client::Error| format!("etcd {what}: {err}");
    // An existing root keeps its password: this run logged in with it (changing it would
    // also end this very session).
    if let Err(err) = client.user_add("root", root_password, None).await
        && !exists(&err)
    {
        return Err(fail("root user", err));
    }
    client
        .user_grant_role("root", "root")
        .await
        .map_err(|e| fail("root role", e))?;
    let prefix = config.prefix.as_bytes().to_vec();
    for (name, password) in [
        (OPERATOR, &passwords.operator),
        (GATEWAY, &passwords.gateway),
        (SHARD, &passwords.shard),
    ] {
        if let Err(err) = client.role_add(name).await
            && !exists(&err)
        {
            return Err(fail(&format!("role {name}"), err));
        }
        client
            .role_grant_permission(name, Permission::read(prefix.clone()).with_prefix())
            .await
            .map_err(|e| fail(&format!("{name} reads"), e))?;
        for segment in writable(name) {
            let mut key = prefix.clone();
            key.extend_from_slice(segment.as_bytes());
            client
                .role_grant_permission(name, Permission::read_write(key).with_prefix())
                .await
                .map_err(|e| fail(&format!("{name} writes {segment}"), e))?;
        }
        match client.user_add(name, password.as_str(), None).await {
            Ok(_) => {}
            Err(err) if exists(&err) => {
                client
                    .user_change_password(name, password.as_str())
                    .await
                    .map_err(|e| fail(&format!("{name} password"), e))?;
            }
            Err(err) => return Err(fail(&format!("user {name}"), err)),
        }
        client
            .user_grant_role(name, name)
            .await
            .map_err(|e| fail(&format!("{name} role"), e))?;
    }
    client
        .auth_enable()
        .await
        .map_err(|e| fail("auth enable", e))?;
    Ok(())
}
