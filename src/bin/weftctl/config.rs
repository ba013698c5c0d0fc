//! `weftctl config get|set`: the network config at `<prefix>/config`, secrets hidden unless
//! asked for; a config is validated before it is stored.

use std::io::Read;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use serde_json::Value;
use weft::config::NetworkConfig;
use weft::store::{EtcdStore, StoreError};

use super::Format;

#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// Print the config as stored (`-o json`: with every default filled in). Secret settings
    /// (the WireGuard PSK) are shown as "(hidden)".
    Get {
        /// Show secret settings as they are.
        #[arg(long)]
        show_secrets: bool,
    },
    /// Validate a config and store it.
    Set {
        /// A file with the config JSON, or `-` for standard input.
        file: String,
    },
}

pub async fn run(store: &EtcdStore, out: Format, cmd: ConfigCmd) -> Result<()> {
    match cmd {
        ConfigCmd::Get { show_secrets } => get(store, out, show_secrets).await,
        ConfigCmd::Set { file } => set(store, &file).await,
    }
}

async fn get(store: &EtcdStore, out: Format, show_secrets: bool) -> Result<()> {
    let key = store.config_key();
    let text = store
        .get_config_text()
        .await?
        .ok_or(StoreError::NoConfig { key: key.clone() })?;
    let parsed = NetworkConfig::parse(&text);
    match out {
        Format::Table => {
            say_config(&text, show_secrets)?;
            if let Err(problems) = parsed {
                let e = StoreError::Config { key, problems };
                esay!("weftctl: warning: the config is not valid: {e}");
            }
        }
        Format::Json => {
            let cfg = parsed.map_err(|problems| StoreError::Config { key, problems })?;
            let mut doc = cfg.effective_json();
            if !show_secrets {
                weft::config::hide_secrets(&mut doc);
            }
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
    }
    Ok(())
}

/// The stored config as it is, unless it holds a secret: then as JSON with the secret hidden
/// (a text that is not JSON cannot be searched for one, so it is shown only when asked).
fn say_config(text: &str, show_secrets: bool) -> Result<()> {
    if show_secrets {
        println!("{}", weft::show::escape_lines(text.trim_end()));
        return Ok(());
    }
    let Ok(mut doc) = serde_json::from_str::<Value>(text) else {
        bail!("the stored config is not valid JSON, so a secret in it cannot be hidden; --show-secrets prints it as stored");
    };
    let hidden = weft::config::hide_secrets(&mut doc);
    if hidden.is_empty() {
        println!("{}", weft::show::escape_lines(text.trim_end()));
    } else {
        let pretty = serde_json::to_string_pretty(&doc)?;
        println!("{}", weft::show::escape_lines(&pretty));
        esay!(
            "weftctl: {} hidden; --show-secrets shows it",
            hidden.join(", ")
        );
    }
    Ok(())
}

async fn set(store: &EtcdStore, file: &str) -> Result<()> {
    let text = if file == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the config from standard input")?;
        s
    } else {
        weft::file::read_text(std::path::Path::new(file), weft::file::limit::LARGE)?
    };
    store.put_config(&text).await?;
    say!("config written to {}", store.config_key());
    Ok(())
}
