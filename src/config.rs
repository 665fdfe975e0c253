//! The pmvisor config file: a small TOML file that names the pool, the
//! control socket, the size of the embedded default pool, the swap tier of
//! block regions and the log filter.
//!
//! ```toml
//! pool = "/dev/pmem0"
//! socket = "/run/pmvisor/pmvisor.sock"
//! default_pool_size = "8G"     # or a number of bytes
//! swap = "/var/lib/pmvisor/default.pool.swap"   # block regions' swap tier
//! log = "info,pmvisor=debug"
//! ```
//!
//! Unknown keys are an error naming the key, the file and the line, so that a
//! typo never silently falls back to a default. Relative paths are taken
//! relative to the directory of the config file. Flags and environment
//! variables override the file.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::cli::size::parse_size;

/// Settings read from a config file; every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// The file these settings came from, if any.
    pub source: Option<PathBuf>,
    /// The pool to open.
    pub pool: Option<PathBuf>,
    /// The daemon's control socket.
    pub socket: Option<PathBuf>,
    /// Size in bytes of the embedded default pool when it is created.
    pub default_pool_size: Option<u64>,
    /// The swap tier file of block regions.
    pub swap: Option<PathBuf>,
    /// A tracing filter such as `info` or `warn,pmvisor=debug`.
    pub log: Option<String>,
}

/// Why a config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error(
        "cannot read config file {} ({cause}); fix the path given with --config or \
         PMVISOR_CONFIG",
        path.display()
    )]
    Read { path: PathBuf, cause: std::io::Error },
    /// The file is not valid TOML or has a bad or unknown key.
    #[error("config file {}, line {line}: {message}; fix or remove that line", path.display())]
    Invalid { path: PathBuf, line: usize, message: String },
}

/// The on-disk shape of the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    pool: Option<PathBuf>,
    socket: Option<PathBuf>,
    #[serde(default, deserialize_with = "deserialize_size")]
    default_pool_size: Option<u64>,
    swap: Option<PathBuf>,
    log: Option<String>,
}

impl Config {
    /// Load the config: `explicit` (from `--config` / `PMVISOR_CONFIG`) must
    /// exist; without it the system file is read when present, and an empty
    /// config is returned otherwise.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        match explicit {
            Some(path) => Config::read(path),
            None => {
                let system = Path::new(crate::paths::SYSTEM_CONFIG);
                if system.exists() {
                    Config::read(system)
                } else {
                    Ok(Config::default())
                }
            }
        }
    }

    /// Read and parse one config file.
    pub fn read(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|cause| ConfigError::Read { path: path.to_path_buf(), cause })?;
        Config::parse(&text, path)
    }

    /// Parse config text; `path` names the file in errors and anchors
    /// relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|err| ConfigError::Invalid {
            path: path.to_path_buf(),
            line: err.span().map_or(1, |span| line_of(text, span.start)),
            message: err.message().trim_end_matches('.').to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("/"));
        let anchor = |p: PathBuf| if p.is_relative() { base.join(p) } else { p };
        Ok(Config {
            source: Some(path.to_path_buf()),
            pool: file.pool.map(anchor),
            socket: file.socket.map(anchor),
            default_pool_size: file.default_pool_size,
            swap: file.swap.map(anchor),
            log: file.log,
        })
    }
}

/// 1-based line number of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

/// Accept `default_pool_size` as a number of bytes or a size string ("4G").
fn deserialize_size<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    struct SizeVisitor;

    impl Visitor<'_> for SizeVisitor {
        type Value = Option<u64>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a size such as 4G, 512MiB or a number of bytes")
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            u64::try_from(v).map(Some).map_err(|_| E::custom(format!("the size {v} is negative")))
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            parse_size(v).map(Some).map_err(E::custom)
        }
    }

    deserializer.deserialize_any(SizeVisitor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/pmvisor/pmvisor.toml"))
    }

    #[test]
    fn every_key_is_read() {
        let config = parse(
            "pool = \"/dev/pmem0\"\nsocket = \"/tmp/s.sock\"\ndefault_pool_size = \"8G\"\n\
             swap = \"/tmp/p.swap\"\nlog = \"debug\"\n",
        )
        .unwrap();
        assert_eq!(config.pool.as_deref(), Some(Path::new("/dev/pmem0")));
        assert_eq!(config.socket.as_deref(), Some(Path::new("/tmp/s.sock")));
        assert_eq!(config.default_pool_size, Some(8 << 30));
        assert_eq!(config.swap.as_deref(), Some(Path::new("/tmp/p.swap")));
        assert_eq!(config.log.as_deref(), Some("debug"));
    }

    #[test]
    fn default_pool_size_may_be_a_number_of_bytes() {
        assert_eq!(parse("default_pool_size = 1048576").unwrap().default_pool_size, Some(1 << 20));
    }

    #[test]
    fn unknown_key_names_the_key_the_file_and_the_line() {
        let err = parse("pool = \"/a\"\ncolour = \"blue\"\n").unwrap_err().to_string();
        assert!(err.contains("unknown field `colour`"), "{err}");
        assert!(err.contains("/etc/pmvisor/pmvisor.toml, line 2"), "{err}");
    }

    #[test]
    fn bad_size_says_what_sizes_look_like() {
        let err = parse("default_pool_size = \"lots\"").unwrap_err().to_string();
        assert!(err.contains("invalid size `lots`"), "{err}");
    }

    #[test]
    fn relative_paths_are_relative_to_the_config_file() {
        let config = parse("pool = \"pools/a.pool\"").unwrap();
        assert_eq!(config.pool.as_deref(), Some(Path::new("/etc/pmvisor/pools/a.pool")));
    }

    #[test]
    fn a_missing_explicit_file_is_an_error() {
        let err = Config::load(Some(Path::new("/nonexistent/pmvisor.toml"))).unwrap_err();
        assert!(err.to_string().starts_with("cannot read config file /nonexistent/pmvisor.toml"));
    }
}
