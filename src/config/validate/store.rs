//! `[store]`: `kind = "sqlite"` (default) or `"postgres"` with `url` or `url_file`.
//!
//! An inline `url` is checked now (scheme, `sslmode`); a `url_file` is read when the daemon
//! starts (the secret may be provisioned after the config is written), and checked then by the
//! same function, [`crate::store::postgres::ConnectOptions::parse`].

use super::super::raw::RawStore;
use super::super::{PostgresConfig, PostgresUrl, StoreConfig};
use super::{Cx, Result};

impl Cx<'_> {
    pub(super) fn store(&self, raw: RawStore) -> Result<StoreConfig> {
        match raw.kind.as_deref().unwrap_or("sqlite") {
            "sqlite" => {
                for (key, value) in [
                    ("store.url", &raw.url),
                    ("store.url_file", &raw.url_file),
                    ("store.ca_file", &raw.ca_file),
                ] {
                    if value.is_some() {
                        return Err(self.invalid(key, "only with store.kind = \"postgres\""));
                    }
                }
                Ok(StoreConfig::Sqlite)
            }
            "postgres" => {
                let ca_file = raw
                    .ca_file
                    .map(|v| self.existing_file("store.ca_file", v))
                    .transpose()?;
                let url = match (raw.url, raw.url_file) {
                    (Some(_), Some(_)) => {
                        return Err(self.invalid("store.url", "give url or url_file, not both"));
                    }
                    (None, None) => {
                        return Err(self.invalid(
                            "store.url",
                            "store.kind = \"postgres\" needs url or url_file",
                        ));
                    }
                    (Some(url), None) => {
                        crate::store::postgres::ConnectOptions::parse(&url, ca_file.as_deref())
                            .map_err(|e| self.invalid("store.url", e.to_string()))?;
                        PostgresUrl::Inline(url)
                    }
                    (None, Some(file)) => PostgresUrl::File(self.path("store.url_file", file)?),
                };
                Ok(StoreConfig::Postgres(PostgresConfig { url, ca_file }))
            }
            other => Err(self.invalid(
                "store.kind",
                format!("unknown store kind {other:?} (sqlite or postgres)"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, ConfigError, PostgresUrl, StoreConfig};

    const BASE: &str = "trust_domain = \"a.test\"\ndata_dir = \"/d\"\n[workload_api]\n\
                        socket = \"/w.sock\"\n[admin_api]\nsocket = \"/a.sock\"\n";

    fn parse(store: &str) -> Result<Config, ConfigError> {
        Config::from_toml(
            &format!("{BASE}[store]\n{store}"),
            Path::new("/etc/m/c.toml"),
        )
    }

    fn key_of(store: &str) -> String {
        match parse(store) {
            Ok(_) => panic!("accepted: {store}"),
            Err(e) => e.key().unwrap_or_default().to_owned(),
        }
    }

    #[test]
    fn sqlite_is_the_default_and_takes_no_url() {
        let c =
            Config::from_toml(BASE, Path::new("/etc/m/c.toml")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.store, StoreConfig::Sqlite);
        assert_eq!(
            key_of("kind = \"sqlite\"\nurl = \"postgres://localhost/m\""),
            "store.url"
        );
    }

    #[test]
    fn postgres_takes_url_or_url_file_relative_to_the_config() {
        let c = parse("kind = \"postgres\"\nurl_file = \"secrets/pg\"")
            .unwrap_or_else(|e| panic!("{e}"));
        let StoreConfig::Postgres(pg) = c.store else {
            panic!("not postgres")
        };
        assert_eq!(pg.url, PostgresUrl::File("/etc/m/secrets/pg".into()));
        let c = parse("kind = \"postgres\"\nurl = \"postgres://u:pw@127.0.0.1/m\"")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            !format!("{c:?}").contains("pw@"),
            "the password is redacted in Debug"
        );
    }

    #[test]
    fn bad_store_settings_name_their_key() {
        assert_eq!(key_of("kind = \"mysql\""), "store.kind");
        assert_eq!(key_of("kind = \"postgres\""), "store.url");
        assert_eq!(
            key_of("kind = \"postgres\"\nurl = \"postgres://h/m\"\nurl_file = \"f\""),
            "store.url"
        );
        assert_eq!(
            key_of("kind = \"postgres\"\nurl = \"postgres://u@db.example/m?sslmode=require\""),
            "store.url"
        );
        assert_eq!(
            key_of("kind = \"postgres\"\nurl_file = \"f\"\nca_file = \"/nonexistent/ca.pem\""),
            "store.ca_file"
        );
    }
}
