//! SQL through `psql`, like the pgbench baselines: loadgen has no database
//! driver of its own. Queries that return something return one JSON value
//! (built with `json_build_object` / `json_agg`), parsed here.

use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("running psql: {0}")]
    Spawn(std::io::Error),
    #[error("psql failed ({status}): {stderr}")]
    Failed {
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("psql returned no JSON value ({output:?}): {source}")]
    Json {
        output: String,
        source: serde_json::Error,
    },
}

/// Runs `sql` (one or more statements) and returns what the last one printed,
/// unaligned and without headers.
pub async fn run(database_url: &str, sql: &str) -> Result<String, SqlError> {
    let output = Command::new("psql")
        .arg(database_url)
        .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .await
        .map_err(SqlError::Spawn)?;
    if !output.status.success() {
        return Err(SqlError::Failed {
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Runs `sql`, whose only output is one row with one JSON column (statements
/// before it must print nothing: `SET`, or anything silenced by `-q`).
/// `json_agg` output may span lines; all of it is parsed.
pub async fn json<T: serde::de::DeserializeOwned>(
    database_url: &str,
    sql: &str,
) -> Result<T, SqlError> {
    let output = run(database_url, sql).await?;
    serde_json::from_str(&output).map_err(|source| SqlError::Json { output, source })
}
