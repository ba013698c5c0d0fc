//! This host's WireGuard private key: one per host, in a file of mode 0400 that survives
//! reboots (flannel keeps its key in /run, so every boot gives the host a new public key and
//! its peers a stale one). A node moving from flanneld takes flannel's key file over, keeping
//! its public key.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use super::{format_key, parse_key, Key};

/// Where weft keeps the key unless `WIREGUARD_KEY_FILE` says otherwise.
pub const DEFAULT_KEY_FILE: &str = "/var/lib/weft/wgkey";
/// Where flanneld keeps its key.
pub const FLANNEL_KEY_FILE: &str = "/run/flannel/wgkey";

/// Where the key lives: `$WIREGUARD_KEY_FILE` (flannel's variable), else the default.
pub fn key_file() -> PathBuf {
    std::env::var_os("WIREGUARD_KEY_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_KEY_FILE))
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the WireGuard key file {0}")]
    Read(crate::file::FileError),
    #[error("the WireGuard key file {path} does not hold a base64 key of 32 bytes")]
    Malformed { path: PathBuf },
    #[error("cannot write the WireGuard key file {path}: {error}")]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// Where the key came from, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    Kept,
    TakenFromFlannel,
    Generated,
}

/// The key at `path`; else flannel's at `flannel` (copied to `path`); else a new one written
/// to `path`. A key file readable by others is narrowed to 0400.
pub fn load_or_create(path: &Path, flannel: Option<&Path>) -> Result<(Key, KeySource), KeyError> {
    if let Some(key) = read(path)? {
        narrow(path)?;
        return Ok((key, KeySource::Kept));
    }
    if let Some(key) = flannel
        .filter(|f| *f != path)
        .map(read)
        .transpose()?
        .flatten()
    {
        write(path, &key)?;
        return Ok((key, KeySource::TakenFromFlannel));
    }
    let mut key: Key = rand::random();
    // The clamping `wg genkey` applies, so the file holds what wg would have written.
    key[0] &= 248;
    key[31] = (key[31] & 127) | 64;
    write(path, &key)?;
    Ok((key, KeySource::Generated))
}

/// The public key of a private key (X25519).
pub fn public_key(private: &Key) -> Key {
    let secret = x25519_dalek::StaticSecret::from(*private);
    x25519_dalek::PublicKey::from(&secret).to_bytes()
}

fn read(path: &Path) -> Result<Option<Key>, KeyError> {
    match crate::file::read_text(path, crate::file::limit::SMALL) {
        Ok(text) => parse_key(&text)
            .map(Some)
            .ok_or_else(|| KeyError::Malformed { path: path.into() }),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(KeyError::Read(e)),
    }
}

fn narrow(path: &Path) -> Result<(), KeyError> {
    let err = |error| KeyError::Write {
        path: path.into(),
        error,
    };
    let mode = std::fs::metadata(path).map_err(err)?.permissions().mode() & 0o777;
    if mode != 0o400 {
        tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "the WireGuard key file was readable by more than its owner; narrowing it to 0400");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o400)).map_err(err)?;
    }
    Ok(())
}

/// Writes the key (base64, no newline, as flannel does) through a temporary file created
/// with mode 0400, so the key is never readable by others, not even for a moment.
fn write(path: &Path, key: &Key) -> Result<(), KeyError> {
    let err = |error| KeyError::Write {
        path: path.into(),
        error,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(format_key(key).as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Key {
        let v: Vec<u8> = (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect();
        v.try_into().unwrap()
    }

    #[test]
    fn public_key_is_x25519_of_rfc7748() {
        let private = hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        let public = hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
        assert_eq!(public_key(&private), public);
    }

    #[test]
    fn a_key_is_made_once_kept_at_0400_and_flannels_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/wgkey");
        let (k, src) = load_or_create(&path, None).unwrap();
        assert_eq!(src, KeySource::Generated);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o400);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format_key(&k));
        assert_eq!(load_or_create(&path, None).unwrap(), (k, KeySource::Kept));

        let flannel = dir.path().join("flannel-wgkey");
        std::fs::write(&flannel, format_key(&[9; 32])).unwrap();
        let other = dir.path().join("other/wgkey");
        assert_eq!(
            load_or_create(&other, Some(&flannel)).unwrap(),
            ([9; 32], KeySource::TakenFromFlannel)
        );
        std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o644)).unwrap();
        load_or_create(&other, Some(&flannel)).unwrap();
        let mode = std::fs::metadata(&other).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o400);

        let bad = dir.path().join("bad");
        std::fs::write(&bad, "not a key").unwrap();
        let e = load_or_create(&bad, None).unwrap_err().to_string();
        assert!(e.contains("does not hold a base64 key"), "{e}");
    }
}
