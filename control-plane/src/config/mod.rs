//! The YAML source of truth: one file in, the Envoy v3 resources of one
//! revision ([`Resources`]) out, or every problem found, each with file, line,
//! column and path.
//!
//! A file holds a concise form (`clusters:`, `listeners:`), an Envoy-native
//! form (`static_resources:` as in an envoy.yaml), or both. Both end up as the
//! same protos: clusters served as EDS over ADS, HTTP routes served over RDS.
//!
//! Files of this module and what each owns:
//! - `mod.rs`: the public API, the pipeline below, and turning problems into
//!   [`ConfigError`]s with positions.
//! - `schema.rs`: the serde types of the file (concise form, top-level keys).
//! - `native.rs`: reading `static_resources` with prost-reflect and normalising
//!   it into servable resources, plus native-only checks.
//! - `duration.rs`, `address.rs`: the concise form's scalar types.
//! - `translate.rs`: pure functions, concise model -> Envoy protos.
//! - `validate.rs`: semantic checks and cross-references over both forms.
//! - `position.rs`: path -> line/column index from yaml-rust2 parser events.
//!
//! The pipeline: (1) one serde pass reads both forms. Structural problems (YAML
//! syntax, unknown or misspelt keys, wrong types, bad durations, addresses or
//! ports) stop it, so only the first one is reported; its path comes from
//! serde_path_to_error and its position from serde_yaml. (2) Semantic checks
//! run on the typed values and collect every problem (duplicate names and
//! addresses, undefined clusters, health check and route rules...); their
//! positions come from the [`position`] index. (3) Translation and
//! normalisation produce the protos, returned only when no problem was found.
//!
//! This module does not watch files, version or encode resources: `source` and
//! `snapshot` do.

mod address;
mod duration;
mod native;
mod position;
mod schema;
mod translate;
mod validate;

use std::fmt;
use std::path::Path;

use crate::resources::Resources;
use position::PositionIndex;
use validate::{Catalog, Issue};

/// One problem in a config file.
///
/// `line` and `column` are 1-based; both are 0 when the position is unknown.
/// `path` names the node, like `clusters[1].endpoints[2]` (`.` is the root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 && self.column == 0 {
            write!(f, "{}: {}: {}", self.file, self.path, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}: {}",
                self.file, self.line, self.column, self.path, self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in a config file, in file order. Never empty when
/// returned by [`load_file`] or [`load_str`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Reads and loads the config file at `path`; errors name the file as given.
pub fn load_file(path: &Path) -> Result<Resources, ConfigErrors> {
    let file_name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => load_str(&file_name, &text),
        Err(e) => Err(ConfigErrors(vec![ConfigError {
            file: file_name,
            line: 0,
            column: 0,
            path: ".".to_string(),
            message: format!("cannot read the file: {e}"),
        }])),
    }
}

/// Loads config text; `file_name` is only used in error messages.
pub fn load_str(file_name: &str, text: &str) -> Result<Resources, ConfigErrors> {
    let index = PositionIndex::build(text);
    let deserializer = serde_yaml::Deserializer::from_str(text);
    let file = match serde_path_to_error::deserialize::<_, Option<schema::File>>(deserializer) {
        Ok(Some(file)) => file,
        Ok(None) => {
            // A truncated or emptied file must not be served as "no resources".
            return Err(ConfigErrors(vec![ConfigError {
                file: file_name.to_string(),
                line: 0,
                column: 0,
                path: ".".to_string(),
                message: "file is empty; write `clusters: []` to serve nothing".to_string(),
            }]));
        }
        Err(e) => return Err(ConfigErrors(vec![structural(file_name, e, &index)])),
    };

    let mut catalog = Catalog::default();
    let mut issues = Vec::new();
    validate::concise(&file, &mut catalog, &mut issues);
    let mut resources = Resources::default();
    for c in &file.clusters {
        let (cluster, endpoints) = translate::cluster(c);
        resources.clusters.push(cluster);
        resources.endpoints.push(endpoints);
    }
    for l in &file.listeners {
        let (listener, routes) = translate::listener(l);
        resources.listeners.push(listener);
        resources.routes.extend(routes);
    }
    if let Some(native) = file.static_resources {
        native::normalise(native, &mut resources, &mut catalog, &mut issues);
    }
    validate::cross_references(&catalog, &mut issues);

    if issues.is_empty() {
        return Ok(resources);
    }
    let mut errors: Vec<ConfigError> = issues
        .into_iter()
        .map(|Issue { path, message }| {
            let (line, column) = index.value(&path).unwrap_or((0, 0));
            ConfigError {
                file: file_name.to_string(),
                line,
                column,
                path,
                message,
            }
        })
        .collect();
    // Stable: problems at the same node keep the order they were found in.
    errors.sort_by_key(|e| (e.line, e.column));
    Err(ConfigErrors(errors))
}

/// The first structural error, with serde_path_to_error's path and serde_yaml's
/// position.
fn structural(
    file_name: &str,
    error: serde_path_to_error::Error<serde_yaml::Error>,
    index: &PositionIndex,
) -> ConfigError {
    let mut path = error.path().to_string();
    let error = error.into_inner();
    let (mut line, mut column) = error
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((0, 0));
    let mut message = bare_message(&error);
    if message == "failed to parse duration" {
        // prost-reflect's message for a native duration such as `5` or `5m`.
        message.push_str(": native durations are seconds with an `s`, like \"5s\" or \"0.25s\"");
    }
    // prost-reflect reports an unknown field at the map holding it: point at
    // the key instead.
    if let Some(key) = message
        .strip_prefix("unrecognized field name '")
        .and_then(|rest| rest.strip_suffix('\''))
    {
        let parent = if path == "." { "" } else { path.as_str() };
        let key_path = position::join_key(parent, key);
        if let Some(position) = index.key(&position::join_key(parent, &position::snake_case(key))) {
            (line, column) = position;
        }
        path = key_path;
    }
    ConfigError {
        file: file_name.to_string(),
        line,
        column,
        path,
        message,
    }
}

/// serde_yaml's message without the position and path it adds to it (both are
/// reported separately).
fn bare_message(error: &serde_yaml::Error) -> String {
    let mut text = error.to_string();
    if let Some(location) = error.location() {
        let suffix = format!(" at line {} column {}", location.line(), location.column());
        if let Some(at) = text.find(&suffix) {
            text.replace_range(at..at + suffix.len(), "");
        }
    }
    // serde_yaml writes `path: message`; a path has no spaces and messages
    // never start with a single bare word and a colon.
    if let Some((prefix, rest)) = text.split_once(": ") {
        if !prefix.is_empty()
            && !prefix.contains(char::is_whitespace)
            && !prefix.starts_with(['`', '\'', '"'])
        {
            text = rest.to_string();
        }
    }
    text
}

