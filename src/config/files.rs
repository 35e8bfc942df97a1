//! The config files: the main file, then the drop-ins of `<config dir>/conf.d/*.toml` merged over
//! it in lexical order (later wins; tables merged key by key, other values replaced), each
//! checked on its own first so an error names its file. Every file may carry the format's
//! `version` (current [`CONFIG_VERSION`]); a higher one is refused.

use std::path::{Path, PathBuf};

use super::{Config, ConfigError};

/// The config format this concord reads and writes (the `version` key at the top of a file).
pub const CONFIG_VERSION: i64 = 1;

/// Directory of drop-ins, beside the main file.
pub const DROP_IN_DIR: &str = "conf.d";

/// The TOML text of one file as a table, its `version` checked and removed.
fn table(path: &Path, text: &str) -> Result<toml::Table, ConfigError> {
    let parse_error = |message: String| ConfigError::Parse {
        path: path.to_owned(),
        message,
    };
    let mut table: toml::Table = toml::from_str(text)
        .map_err(|e| parse_error(e.to_string().trim_end().replace('\n', " ")))?;
    match table.remove("version") {
        None => {}
        Some(toml::Value::Integer(v)) if (1..=CONFIG_VERSION).contains(&v) => {}
        Some(toml::Value::Integer(v)) if v > CONFIG_VERSION => {
            return Err(parse_error(format!(
                "version = {v} is newer than this concord reads (version {CONFIG_VERSION}); \
                 upgrade concord or rewrite the file for version {CONFIG_VERSION}"
            )))
        }
        Some(v) => {
            return Err(parse_error(format!(
                "version = {v}: expected an integer from 1 to {CONFIG_VERSION}"
            )))
        }
    }
    Ok(table)
}

/// A [`Config`] from one file's text (unknown keys are errors naming the file).
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let table = table(path, text)?;
    deserialize(path, table)
}

fn deserialize(path: &Path, table: toml::Table) -> Result<Config, ConfigError> {
    toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', " "),
        })
}

/// `over` merged into `base`: tables key by key, anything else replaced.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// The drop-ins beside `main`, in the order they apply.
pub fn drop_ins(main: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let dir = main.parent().unwrap_or(Path::new("/")).join(DROP_IN_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(ConfigError::Read { path: dir, source }),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml") && !p.is_dir())
        .collect();
    files.sort();
    Ok(files)
}

/// Reads `main` (missing is fine unless `required`) and its drop-ins, merged.
pub fn load(main: &Path, required: bool) -> Result<Config, ConfigError> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let mut merged = match std::fs::read_to_string(main) {
        Ok(text) => table(main, &text)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => toml::Table::new(),
        Err(source) => {
            return Err(ConfigError::Read {
                path: main.to_owned(),
                source,
            })
        }
    };
    deserialize(main, merged.clone())?;
    let drop_ins = drop_ins(main)?;
    for file in &drop_ins {
        let t = table(file, &read(file)?)?;
        deserialize(file, t.clone())?;
        merge(&mut merged, t);
    }
    let last = drop_ins.last().map_or(main, PathBuf::as_path);
    deserialize(last, merged)
}

/// Directories as one colon-separated string (containerd's `config_path` spelling).
pub fn joined_paths(dirs: &[PathBuf]) -> String {
    let parts: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    parts.join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn drop_ins_merge_over_the_main_file_in_lexical_order_table_by_table() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("config.toml");
        write(
            &main,
            "version = 1\nlog_level = \"warn\"\n[containerd]\nnamespace = \"main\"\n\
             snapshotter = \"native\"\n[runtime.handlers.runc]\nroot = \"/r\"\n",
        );
        let d = dir.path().join(DROP_IN_DIR);
        write(
            &d.join("20-b.toml"),
            "[containerd]\nnamespace = \"b\"\n[runtime.handlers.kata]\n\
             runtime_type = \"io.containerd.kata.v2\"\n",
        );
        write(&d.join("10-a.toml"), "[containerd]\nnamespace = \"a\"\n");
        write(&d.join("ignored.conf"), "not toml at all");
        let c = load(&main, true).unwrap();
        assert_eq!(c.log_level, "warn");
        assert_eq!(c.containerd.namespace, "b");
        assert_eq!(c.containerd.snapshotter, "native");
        assert!(c.runtime.handlers.contains_key("kata"));
        assert_eq!(c.runtime.handlers["runc"].root, "/r");
    }

    #[test]
    fn a_bad_drop_in_is_named_and_a_missing_main_file_still_reads_drop_ins() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("config.toml");
        let d = dir.path().join(DROP_IN_DIR);
        write(&d.join("10-a.toml"), "log_level = \"debug\"\n");
        assert_eq!(load(&main, false).unwrap().log_level, "debug");
        assert!(load(&main, true).is_err());
        write(&d.join("20-b.toml"), "lgo_level = \"debug\"\n");
        let e = load(&main, false).unwrap_err().to_string();
        assert!(e.contains("20-b.toml") && e.contains("lgo_level"), "{e}");
    }

    #[test]
    fn a_newer_or_malformed_version_is_refused_naming_the_file() {
        let p = Path::new("/etc/concord/config.toml");
        assert!(parse(p, "version = 1\n").is_ok());
        let e = parse(p, "version = 2\n").unwrap_err().to_string();
        assert!(
            e.contains("config.toml") && e.contains("version = 2"),
            "{e}"
        );
        assert!(parse(p, "version = \"1\"\n").is_err());
        assert!(parse(p, "version = 0\n").is_err());
    }

    #[test]
    fn a_path_list_is_an_array_or_a_colon_separated_string() {
        let p = Path::new("c.toml");
        let joined = parse(p, "registry_config_path = \"/a:/b\"\n").unwrap();
        let array = parse(p, "registry_config_path = [\"/a\", \"/b\"]\n").unwrap();
        assert_eq!(
            joined.registry_config_path,
            [Path::new("/a"), Path::new("/b")]
        );
        assert_eq!(joined, array);
        assert_eq!(joined_paths(&array.registry_config_path), "/a:/b");
        let e = parse(p, "registry_config_path = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("registry_config_path"), "{e}");
    }
}
