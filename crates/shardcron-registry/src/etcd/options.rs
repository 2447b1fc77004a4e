//! How to reach an etcd cluster.

use std::fmt;
use std::time::Duration;

use etcd_client as ec;

use crate::{RegistryError, Result};

/// etcd closes connections whose HTTP/2 pings come more often than every 5 s
/// ("too_many_pings"), so the keep-alive interval may not be shorter.
pub const MIN_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(5);

/// TLS settings: the CA that signed the servers' certificates and, for client
/// certificate authentication, the client's certificate and key (all PEM).
#[derive(Clone)]
pub struct EtcdTls {
    /// CA certificate(s), PEM.
    pub ca_pem: Vec<u8>,
    /// Client certificate chain, PEM.
    pub cert_pem: Option<Vec<u8>>,
    /// Client private key, PEM. Never printed.
    pub key_pem: Option<Vec<u8>>,
    /// The name to verify in the server's certificate, if not the endpoint's host.
    pub domain: Option<String>,
}

impl fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdTls")
            .field("ca_pem", &format_args!("<{} bytes>", self.ca_pem.len()))
            .field("client_cert", &self.cert_pem.is_some())
            .field("key_pem", &self.key_pem.as_ref().map(|_| "<redacted>"))
            .field("domain", &self.domain)
            .finish()
    }
}

/// Connection settings for [`super::EtcdRegistry`].
#[derive(Clone)]
pub struct EtcdOptions {
    /// `host:port`, `http://host:port` or `https://host:port`, one per member.
    pub endpoints: Vec<String>,
    /// Prefix of every key (a trailing `/` is added if missing), e.g.
    /// `/shardcron/prod`.
    pub namespace: String,
    /// Longest wait for a connection to an endpoint.
    pub connect_timeout: Duration,
    /// Longest wait for the answer to one request.
    pub request_timeout: Duration,
    /// HTTP/2 keep-alive ping interval (at least 5 s).
    pub keep_alive_interval: Duration,
    /// How long a ping may go unanswered before the connection is dropped.
    pub keep_alive_timeout: Duration,
    /// User name for etcd authentication.
    pub user: Option<String>,
    /// Password for etcd authentication. Never printed.
    pub password: Option<String>,
    /// TLS settings; `None` for plain connections.
    pub tls: Option<EtcdTls>,
}

impl fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdOptions")
            .field("endpoints", &self.endpoints)
            .field("namespace", &self.namespace)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("keep_alive_interval", &self.keep_alive_interval)
            .field("keep_alive_timeout", &self.keep_alive_timeout)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .finish()
    }
}

impl EtcdOptions {
    /// Default settings for `endpoints` and `namespace`.
    pub fn new(endpoints: Vec<String>, namespace: impl Into<String>) -> Self {
        EtcdOptions {
            endpoints,
            namespace: namespace.into(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            keep_alive_interval: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(5),
            user: None,
            password: None,
            tls: None,
        }
    }

    /// Settings from a registry URL: `etcd://host:port[,host:port...]` (plain) or
    /// `etcds://host:port[,...]` (TLS; certificates set separately).
    pub fn from_url(url: &str, namespace: impl Into<String>) -> Result<Self> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            RegistryError::InvalidRequest(format!(
                "registry URL {url:?} must look like etcd://HOST:PORT[,HOST:PORT]"
            ))
        })?;
        let http = match scheme {
            "etcd" | "http" => "http",
            "etcds" | "https" => "https",
            other => {
                return Err(RegistryError::InvalidRequest(format!(
                    "registry URL scheme {other:?} is not supported (use etcd:// or etcds://)"
                )));
            }
        };
        let mut endpoints = Vec::new();
        for hp in rest.trim_end_matches('/').split(',') {
            let hp = hp.trim();
            let valid = hp
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !valid {
                return Err(RegistryError::InvalidRequest(format!(
                    "registry URL {url:?}: endpoint {hp:?} must be HOST:PORT"
                )));
            }
            endpoints.push(format!("{http}://{hp}"));
        }
        Ok(EtcdOptions::new(endpoints, namespace))
    }

    /// Refuse settings etcd would not work with.
    pub fn validate(&self) -> Result<()> {
        if self.endpoints.is_empty() {
            return Err(RegistryError::InvalidRequest(
                "etcd endpoints: at least one is required".into(),
            ));
        }
        if self.keep_alive_interval < MIN_KEEP_ALIVE_INTERVAL {
            return Err(RegistryError::InvalidRequest(format!(
                "etcd keep-alive interval: must be at least {MIN_KEEP_ALIVE_INTERVAL:?} (etcd drops \
                 clients that ping more often), got {:?}",
                self.keep_alive_interval
            )));
        }
        if self.user.is_some() != self.password.is_some() {
            return Err(RegistryError::InvalidRequest(
                "etcd user and password: give both or neither".into(),
            ));
        }
        if let Some(tls) = &self.tls
            && tls.cert_pem.is_some() != tls.key_pem.is_some()
        {
            return Err(RegistryError::InvalidRequest(
                "etcd TLS client certificate and key: give both or neither".into(),
            ));
        }
        Ok(())
    }

    /// The key prefix of the namespace, ending in `/`.
    pub(crate) fn namespace_prefix(&self) -> Vec<u8> {
        let mut ns = self.namespace.clone().into_bytes();
        if ns.last() != Some(&b'/') {
            ns.push(b'/');
        }
        ns
    }

    pub(crate) fn connect_options(&self, require_leader: bool) -> ec::ConnectOptions {
        let mut o = ec::ConnectOptions::new()
            .with_connect_timeout(self.connect_timeout)
            .with_keep_alive(self.keep_alive_interval, self.keep_alive_timeout)
            .with_keep_alive_while_idle(true)
            .with_require_leader(require_leader);
        if let (Some(u), Some(p)) = (&self.user, &self.password) {
            o = o
                .with_user(u.clone(), p.clone())
                .with_auto_token_refresh(true);
        }
        if let Some(tls) = &self.tls {
            let mut t =
                ec::TlsOptions::new().ca_certificate(ec::Certificate::from_pem(&tls.ca_pem));
            if let (Some(c), Some(k)) = (&tls.cert_pem, &tls.key_pem) {
                t = t.identity(ec::Identity::from_pem(c, k));
            }
            if let Some(d) = &tls.domain {
                t = t.domain_name(d.clone());
            }
            o = o.with_tls(t);
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_bad_ones_are_explained() {
        let o = EtcdOptions::from_url("etcd://127.0.0.1:2379,10.0.0.2:2379", "/ns").ok();
        assert_eq!(
            o.map(|o| o.endpoints),
            Some(vec![
                "http://127.0.0.1:2379".to_string(),
                "http://10.0.0.2:2379".to_string()
            ])
        );
        for bad in [
            "127.0.0.1:2379",
            "zk://a:1",
            "etcd://a",
            "etcd://a:0",
            "etcd://:1",
        ] {
            assert!(EtcdOptions::from_url(bad, "/ns").is_err(), "{bad}");
        }
    }

    #[test]
    fn keep_alive_faster_than_5s_and_half_credentials_are_refused() {
        let mut o = EtcdOptions::new(vec!["http://127.0.0.1:2379".into()], "/ns");
        o.keep_alive_interval = Duration::from_secs(1);
        assert!(o.validate().is_err());
        o.keep_alive_interval = Duration::from_secs(5);
        assert!(o.validate().is_ok());
        o.user = Some("root".into());
        assert!(o.validate().is_err());
    }

    #[test]
    fn secrets_are_not_printed() {
        let mut o = EtcdOptions::new(vec!["https://h:1".into()], "/ns");
        o.user = Some("root".into());
        o.password = Some("hunter2-secret".into());
        o.tls = Some(EtcdTls {
            ca_pem: b"CA".to_vec(),
            cert_pem: Some(b"CERT".to_vec()),
            key_pem: Some(b"PRIVATE-KEY-BYTES".to_vec()),
            domain: None,
        });
        let s = format!("{o:?}");
        assert!(!s.contains("hunter2-secret"), "{s}");
        assert!(!s.contains("PRIVATE-KEY-BYTES"), "{s}");
        assert!(s.contains("root"));
    }
}
