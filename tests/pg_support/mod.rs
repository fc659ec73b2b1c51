//! A real PostgreSQL for tests: `.ci/postgres.sh start DIR` starts a throwaway cluster and
//! writes its URL to `DIR/url`; tests find it through `MESHTRUST_TEST_PG_URL_FILE` (or the URL in
//! `MESHTRUST_TEST_PG_URL`). Without either a test prints a skip note and returns; with
//! `MESHTRUST_REQUIRE_POSTGRES=1` (CI) it fails instead.
//!
//! Each test gets its own database ([`TestDb`]), created for it and dropped (forcibly, even
//! after a failed assertion) when the value goes, so tests run in parallel.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

pub mod cluster;

use std::sync::atomic::{AtomicU32, Ordering};

/// The URL of the test cluster's `meshtrust` database (a role with CREATEDB).
pub fn admin_url() -> Option<String> {
    if let Ok(url) = std::env::var("MESHTRUST_TEST_PG_URL")
        && !url.trim().is_empty()
    {
        return Some(url.trim().to_owned());
    }
    let file = std::env::var_os("MESHTRUST_TEST_PG_URL_FILE")?;
    let url = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("MESHTRUST_TEST_PG_URL_FILE {file:?}: {e}"));
    Some(url.trim().to_owned())
}

/// Connects to `url` and runs `work` on the client, on a thread with a runtime of its own (so
/// it is callable from sync and async tests alike).
fn with_client<T, F, Fut>(url: &str, work: F) -> Result<T, String>
where
    T: Send + 'static,
    F: FnOnce(tokio_postgres::Client) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let url = url.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            work(client).await
        })
    })
    .join()
    .unwrap_or_else(|_| Err("sql thread panicked".into()))
}

/// Runs `sql` on `url` on a thread of its own (callable from async tests too).
pub fn run_sql(url: &str, sql: &str) -> Result<(), String> {
    let sql = sql.to_owned();
    with_client(url, move |client| async move {
        client.batch_execute(&sql).await.map_err(|e| e.to_string())
    })
}

/// Runs `sql` and returns the first column of each row, as text.
pub fn query_text(url: &str, sql: &str) -> Result<Vec<String>, String> {
    let sql = sql.to_owned();
    with_client(url, move |client| async move {
        let messages = client.simple_query(&sql).await.map_err(|e| e.to_string())?;
        Ok(messages
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    Some(r.get(0).unwrap_or("").to_owned())
                }
                _ => None,
            })
            .collect())
    })
}

/// A database of its own for one test, dropped with the value.
#[derive(Debug)]
pub struct TestDb {
    /// Its URL.
    pub url: String,
    admin: String,
    name: String,
}

/// A fresh database for `test`, or `None` (after a skip note) when no PostgreSQL is configured.
///
/// # Panics
/// When `MESHTRUST_REQUIRE_POSTGRES=1` and none is configured, or the database cannot be made.
pub fn test_db(test: &str) -> Option<TestDb> {
    let Some(admin) = admin_url() else {
        assert!(
            std::env::var("MESHTRUST_REQUIRE_POSTGRES").as_deref() != Ok("1"),
            "{test}: needs PostgreSQL (MESHTRUST_TEST_PG_URL_FILE from .ci/postgres.sh), and \
             MESHTRUST_REQUIRE_POSTGRES=1"
        );
        eprintln!(
            "SKIPPED {test}: no PostgreSQL (run `.ci/postgres.sh start DIR` and export \
             MESHTRUST_TEST_PG_URL_FILE=DIR/url)"
        );
        return None;
    };
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let clean: String = test
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(36)
        .collect();
    let name = format!(
        "t_{clean}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    run_sql(&admin, &format!("CREATE DATABASE \"{name}\""))
        .unwrap_or_else(|e| panic!("{test}: create database {name}: {e}"));
    let mut url = url::Url::parse(&admin).unwrap();
    url.set_path(&format!("/{name}"));
    Some(TestDb {
        url: url.to_string(),
        admin,
        name,
    })
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Err(e) = run_sql(
            &self.admin,
            &format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name),
        ) {
            eprintln!("cannot drop test database {}: {e}", self.name);
        }
    }
}

/// The TLS side of the test cluster (`.ci/postgres.sh` makes it): the CA file that
/// authenticates the server as `localhost`, and `db`'s URL for the role `meshtrust_tls`, which
/// the server admits over TLS only. `None` when the cluster was not made by that script.
pub fn tls(db: &TestDb) -> Option<(std::path::PathBuf, String)> {
    let file = std::env::var_os("MESHTRUST_TEST_PG_URL_FILE")?;
    let ca = std::path::Path::new(&file).parent()?.join("ca.pem");
    if !ca.exists() {
        return None;
    }
    run_sql(&db.url, "GRANT ALL ON SCHEMA public TO meshtrust_tls").unwrap();
    let mut url = url::Url::parse(&db.url).unwrap();
    url.set_username("meshtrust_tls").unwrap();
    url.set_host(Some("localhost")).unwrap();
    Some((ca, url.to_string()))
}
