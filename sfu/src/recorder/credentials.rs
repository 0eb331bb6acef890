//! Where object storage credentials come from, as AWS's SDKs look for them: keys in the
//! environment; a container credentials endpoint (EKS Pod Identity, ECS); or a web
//! identity token exchanged with STS (EKS IAM roles for service accounts). Only parsing
//! and choosing here; `store.rs` makes the requests and refreshes before expiry.

use jiff::Timestamp;
use std::path::PathBuf;

/// Secrets and tokens read from answers at most this long.
pub const MAX_ANSWER: usize = 64 * 1024;

/// Where the credentials come from.
#[derive(Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// Fixed keys.
    Keys {
        /// The access key's id.
        id: String,
        /// Its secret.
        secret: String,
        /// A session token, for temporary keys.
        token: Option<String>,
    },
    /// An HTTP endpoint that hands out temporary keys (EKS Pod Identity, ECS).
    Container {
        /// Its URL.
        uri: String,
        /// A file holding the `Authorization` value, read again at each fetch (rotated).
        token_file: Option<PathBuf>,
        /// Or the value itself.
        token: Option<String>,
    },
    /// A web identity token traded with STS for a role's temporary keys (IRSA).
    WebIdentity {
        /// The role assumed.
        role_arn: String,
        /// The token's file, read again at each fetch (rotated).
        token_file: PathBuf,
        /// STS's endpoint.
        sts: String,
    },
}

impl std::fmt::Debug for CredentialSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Keys { id, .. } => f
                .debug_struct("Keys")
                .field("id", id)
                .finish_non_exhaustive(),
            Self::Container { uri, .. } => f
                .debug_struct("Container")
                .field("uri", uri)
                .finish_non_exhaustive(),
            Self::WebIdentity { role_arn, .. } => f
                .debug_struct("WebIdentity")
                .field("role_arn", role_arn)
                .finish_non_exhaustive(),
        }
    }
}

impl CredentialSource {
    /// The first source the variables `var` name, in the SDKs' order: keys, web identity,
    /// container endpoint.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Option<Self> {
        let var = |name: &str| var(name).filter(|value| !value.trim().is_empty());
        if let (Some(id), Some(secret)) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
            return Some(Self::Keys {
                id,
                secret,
                token: var("AWS_SESSION_TOKEN"),
            });
        }
        if let (Some(role_arn), Some(token_file)) =
            (var("AWS_ROLE_ARN"), var("AWS_WEB_IDENTITY_TOKEN_FILE"))
        {
            let sts = match var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")) {
                Some(region) => format!("https://sts.{region}.amazonaws.com/"),
                None => "https://sts.amazonaws.com/".into(),
            };
            return Some(Self::WebIdentity {
                role_arn,
                token_file: token_file.into(),
                sts,
            });
        }
        let uri = var("AWS_CONTAINER_CREDENTIALS_FULL_URI").or_else(|| {
            var("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
                .map(|path| format!("http://169.254.170.2{path}"))
        })?;
        Some(Self::Container {
            uri,
            token_file: var("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE").map(PathBuf::from),
            token: var("AWS_CONTAINER_AUTHORIZATION_TOKEN"),
        })
    }

    /// The source the process's environment names.
    pub fn from_env() -> Option<Self> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// The STS request that trades `token` for the role's keys (unsigned: the token is
    /// the proof).
    pub fn web_identity_url(sts: &str, role_arn: &str, token: &str) -> Result<url::Url, String> {
        let mut url = url::Url::parse(sts).map_err(|e| format!("STS endpoint: {e}"))?;
        url.query_pairs_mut()
            .append_pair("Action", "AssumeRoleWithWebIdentity")
            .append_pair("Version", "2011-06-15")
            .append_pair("RoleArn", role_arn)
            .append_pair("RoleSessionName", "tutti-recorder")
            .append_pair("WebIdentityToken", token.trim());
        Ok(url)
    }
}

/// Whether a container credentials endpoint may be sent the pod's token: over HTTPS, or
/// on this host or its link (EKS Pod Identity's 169.254.170.23, ECS's 169.254.170.2), as
/// AWS's SDKs allow.
pub fn container_endpoint_allowed(url: &url::Url) -> bool {
    if url.scheme() == "https" {
        return true;
    }
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback() || ip.is_link_local(),
        Some(url::Host::Ipv6(ip)) => {
            ip.is_loopback()
                || (ip.segments()[0] & 0xffc0) == 0xfe80
                || ip == std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23)
        }
        Some(url::Host::Domain(name)) => name == "localhost",
        None => false,
    }
}

/// Temporary keys and when they expire.
#[derive(Clone, PartialEq, Eq)]
pub struct Temporary {
    /// The access key's id.
    pub id: String,
    /// Its secret.
    pub secret: String,
    /// The session token.
    pub token: Option<String>,
    /// When they stop working.
    pub expires: Option<Timestamp>,
}

/// The keys a container credentials endpoint answered (`{"AccessKeyId": …,
/// "SecretAccessKey": …, "Token": …, "Expiration": "2026-12-04T10:00:00Z"}`).
pub fn parse_container_answer(body: &[u8]) -> Result<Temporary, String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Answer {
        access_key_id: String,
        secret_access_key: String,
        token: Option<String>,
        expiration: Option<String>,
    }
    let answer: Answer =
        serde_json::from_slice(body).map_err(|e| format!("credentials endpoint: {e}"))?;
    Ok(Temporary {
        id: answer.access_key_id,
        secret: answer.secret_access_key,
        token: answer.token,
        expires: answer.expiration.as_deref().map(parse_time).transpose()?,
    })
}

/// The keys in STS's `AssumeRoleWithWebIdentityResponse`.
pub fn parse_sts_answer(body: &str) -> Result<Temporary, String> {
    let field = |name: &str| {
        let open = format!("<{name}>");
        let close = format!("</{name}>");
        let start = body.find(&open)? + open.len();
        let end = start + body[start..].find(&close)?;
        Some(body[start..end].trim().to_owned())
    };
    let (Some(id), Some(secret)) = (field("AccessKeyId"), field("SecretAccessKey")) else {
        return Err("STS answered without credentials".into());
    };
    Ok(Temporary {
        id,
        secret,
        token: field("SessionToken"),
        expires: field("Expiration").as_deref().map(parse_time).transpose()?,
    })
}

fn parse_time(text: &str) -> Result<Timestamp, String> {
    text.parse::<Timestamp>()
        .map_err(|e| format!("expiration {text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn sources_are_found_in_the_sdks_order() {
        let keys = CredentialSource::from_vars(vars(&[
            ("AWS_ACCESS_KEY_ID", "AKIA"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "http://169.254.170.23/v1/credentials",
            ),
        ]));
        assert!(matches!(
            keys,
            Some(CredentialSource::Keys { token: None, .. })
        ));
        let pod_identity = CredentialSource::from_vars(vars(&[
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "http://169.254.170.23/v1/credentials",
            ),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "/var/run/token"),
        ]));
        assert_eq!(
            pod_identity,
            Some(CredentialSource::Container {
                uri: "http://169.254.170.23/v1/credentials".into(),
                token_file: Some("/var/run/token".into()),
                token: None,
            })
        );
        let ecs = CredentialSource::from_vars(vars(&[(
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "/v2/x",
        )]));
        assert!(
            matches!(ecs, Some(CredentialSource::Container { uri, .. }) if uri == "http://169.254.170.2/v2/x")
        );
        let irsa = CredentialSource::from_vars(vars(&[
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/var/run/irsa"),
            ("AWS_REGION", "eu-west-1"),
        ]));
        assert!(
            matches!(irsa, Some(CredentialSource::WebIdentity { sts, .. }) if sts == "https://sts.eu-west-1.amazonaws.com/")
        );
        assert_eq!(
            CredentialSource::from_vars(vars(&[("AWS_ACCESS_KEY_ID", " ")])),
            None
        );
    }

    #[test]
    fn the_pods_token_goes_only_to_its_own_host_or_link() {
        let allowed = |u: &str| container_endpoint_allowed(&url::Url::parse(u).unwrap());
        assert!(allowed("http://169.254.170.23/v1/credentials"));
        assert!(allowed("http://169.254.170.2/v2/x"));
        assert!(allowed("http://127.0.0.1:9911/creds"));
        assert!(allowed("http://[fd00:ec2::23]/v1/credentials"));
        assert!(allowed("https://credentials.example/"));
        assert!(!allowed("http://10.0.0.5/creds"));
        assert!(!allowed("http://evil.example/creds"));
    }

    #[test]
    fn answers_give_keys_and_their_expiry() {
        let container = parse_container_answer(
            br#"{"AccessKeyId":"ASIA1","SecretAccessKey":"s","Token":"t","Expiration":"2026-12-04T10:00:00Z","RoleArn":"x"}"#,
        )
        .unwrap();
        assert_eq!(container.id, "ASIA1");
        assert_eq!(container.token.as_deref(), Some("t"));
        assert_eq!(
            container.expires.map(|t| t.as_second()),
            Some(1_796_378_400)
        );
        assert!(parse_container_answer(b"{}").is_err());
        assert!(
            parse_container_answer(
                br#"{"AccessKeyId":"a","SecretAccessKey":"b","Expiration":"soon"}"#
            )
            .is_err()
        );
        let sts = parse_sts_answer(
            r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult><Credentials>
    <SessionToken>tok/en+=</SessionToken><SecretAccessKey>sec</SecretAccessKey>
    <Expiration>2026-12-04T10:00:00Z</Expiration><AccessKeyId>ASIA2</AccessKeyId>
  </Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>"#,
        )
        .unwrap();
        assert_eq!(sts.id, "ASIA2");
        assert_eq!(sts.token.as_deref(), Some("tok/en+="));
        assert!(parse_sts_answer("<Error><Code>AccessDenied</Code></Error>").is_err());
        let url = CredentialSource::web_identity_url(
            "https://sts.amazonaws.com/",
            "arn:aws:iam::1:role/r",
            "a.b+c\n",
        )
        .unwrap();
        assert!(
            url.as_str().contains("WebIdentityToken=a.b%2Bc&")
                || url.as_str().ends_with("WebIdentityToken=a.b%2Bc")
        );
        assert!(url.as_str().contains("Action=AssumeRoleWithWebIdentity"));
    }
}
