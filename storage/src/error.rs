use std::path::PathBuf;

use authsec_domain::codec::CodecError;

/// Why the store could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb: {context}: {source}")]
    Rocks {
        context: String,
        #[source]
        source: rocksdb::Error,
    },
    #[error("damaged data in column family {cf}, key {key}: {detail}")]
    Damaged {
        cf: &'static str,
        key: String,
        detail: String,
    },
    #[error("io: {context} ({path}): {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("issuance outbox {path}: {detail}")]
    Outbox { path: PathBuf, detail: String },
    #[error("snapshot {path}: {detail}")]
    Snapshot { path: PathBuf, detail: String },
}

impl StoreError {
    pub fn rocks(context: impl Into<String>) -> impl FnOnce(rocksdb::Error) -> StoreError {
        let context = context.into();
        move |source| StoreError::Rocks { context, source }
    }

    pub fn damaged(cf: &'static str, key: &[u8], e: CodecError) -> StoreError {
        StoreError::Damaged {
            cf,
            key: printable(key),
            detail: e.to_string(),
        }
    }

    pub fn io(
        context: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io {
            context,
            path,
            source,
        }
    }
}

/// A key as a person can read it: text if it is text, else hex (8-byte keys also as numbers).
pub fn printable(key: &[u8]) -> String {
    if key.len() == 8 && key.iter().any(|b| !b.is_ascii_graphic()) {
        return format!(
            "{} (0x{})",
            u64::from_be_bytes(key.try_into().unwrap_or([0; 8])),
            hex::encode(key)
        );
    }
    match std::str::from_utf8(key) {
        Ok(s) if s.chars().all(|c| c.is_ascii_graphic()) => format!("{s:?}"),
        _ => format!("0x{}", hex::encode(key)),
    }
}
