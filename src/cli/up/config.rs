//! The file `up` runs: TOML read with its positions, checked against the command's own
//! argument definitions, and turned into networks to create and command lines to run.
//!
//! No key list is written here. A `[[network]]` table takes the long options of `create`,
//! a `[[network.port]]` table those of the subcommand its `type` names, `[network.dhcp]`
//! those of `dhcp`, `[metrics]` those of `metrics`, each with its dashes written as
//! underscores: they are read from the [`Cli`]'s clap definition, so an option added to a
//! subcommand is a key of the file at once, and `guestnet tap --help` documents the
//! `tap` port's keys. A string or number is the option's value, an array repeats the
//! option, `true` gives a flag and `false` leaves it out. The command line a table makes
//! is then parsed by clap exactly as a typed one would be, so a value the command would
//! refuse is refused here, with the key and the line it came from.
//!
//! Keys are turned into options in sorted order, so that the command line of a table is
//! its normalised form: two files that declare the same port in other words make the same
//! command line, which is how a reload tells a kept port from a changed one.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::Path;

use clap::{ArgAction, CommandFactory, Parser};
use toml::de::{DeTable, DeValue};

use crate::cli::{Cli, Command, admin};
use crate::network::CreateOptions;
use crate::wire::MacAddress;

/// The port types a `[[network.port]]` table may name: each is the subcommand that serves
/// it.
pub const PORT_TYPES: [&str; 6] = ["tap", "vhost-user", "stream", "dgram", "vxlan", "capture"];

/// Tables inside a `[[network]]` that run a subcommand of their own for that network,
/// named as the subcommand is (`[network.dhcp]` runs `guestnet dhcp NET …`).
pub const NETWORK_SERVICES: [&str; 1] = ["dhcp"];

/// The keys of a `[[network]]` table that are not options of `create`.
const NETWORK_OWN_KEYS: [&str; 2] = ["name", "port"];

/// Options no table may set: `up` gives `--dir` itself, and clap's own.
const NOT_KEYS: [&str; 3] = ["dir", "help", "version"];

/// What a file declares, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Networks to create unless they exist, in the file's order.
    pub networks: Vec<NetworkPlan>,
    /// Processes to run and keep running: ports, network services, the metrics exporter.
    pub children: Vec<ChildPlan>,
}

/// A `[[network]]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkPlan {
    /// Its name.
    pub name: String,
    /// What `create` would be given.
    pub options: CreateOptions,
}

/// One process `up` runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildPlan {
    /// The subcommand.
    pub subcommand: String,
    /// The network it serves, if its subcommand takes one.
    pub network: Option<String>,
    /// Its arguments after the program name, the subcommand first; the normalised form
    /// that identifies it across reloads.
    pub args: Vec<String>,
    /// Line of its table in the file.
    pub line: usize,
}

impl fmt::Display for ChildPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` (line {})", self.args.join(" "), self.line)
    }
}

/// One thing wrong in a file, where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// The key it is about, if any.
    pub key: Option<String>,
    /// What is wrong, and what would be right.
    pub message: String,
}

/// Everything wrong in a file, in the file's order.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    /// The file, as named to the user.
    pub file: String,
    /// At least one.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:{}:{}: ", self.file, error.line, error.column)?;
            if let Some(key) = &error.key {
                write!(f, "key `{key}`: ")?;
            }
            write!(f, "{}", error.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Reads and checks the file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&file, &text),
        Err(error) => Err(ConfigErrors {
            file,
            errors: vec![ConfigError {
                line: 0,
                column: 0,
                key: None,
                message: format!("cannot read it: {error}"),
            }],
        }),
    }
}

/// Checks the text of a file (`file` names it in errors).
pub fn parse(file: &str, text: &str) -> Result<Config, ConfigErrors> {
    let mut checker = Checker {
        text,
        cli: Cli::command(),
        errors: Vec::new(),
        config: Config {
            networks: Vec::new(),
            children: Vec::new(),
        },
        endpoints: HashMap::new(),
    };
    match DeTable::parse(text) {
        Ok(root) => checker.root(root.get_ref()),
        Err(error) => {
            let span = error.span().unwrap_or(0..0);
            checker.error(span, None, error.message().trim().to_string());
        }
    }
    if checker.errors.is_empty() {
        return Ok(checker.config);
    }
    let mut errors = checker.errors;
    errors.sort_by_key(|e| (e.line, e.column));
    Err(ConfigErrors {
        file: file.to_string(),
        errors,
    })
}

/// A stable, locally administered unicast MAC for a TAP device `up` creates, from what
/// names it: so a restarted port, and a restarted host, bring back the same address (and
/// the guest the same DHCP lease).
pub fn derived_tap_mac(network: &str, netns: Option<&str>, ifname: &str) -> MacAddress {
    // FNV-1a, 64 bits: stable across builds and Rust versions, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let input = [network, netns.unwrap_or(""), ifname];
    for part in input {
        for &byte in part.as_bytes().iter().chain(&[0u8]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    let bytes = hash.to_be_bytes();
    // Locally administered (0x02) and unicast (0x01 clear).
    let first = (bytes[0] & 0xfc) | 0x02;
    MacAddress([first, bytes[1], bytes[2], bytes[3], bytes[4], bytes[5]])
}

/// Walks the file, collecting what it declares and what is wrong with it.
struct Checker<'t> {
    text: &'t str,
    cli: clap::Command,
    errors: Vec<ConfigError>,
    config: Config,
    /// Socket paths and interfaces already claimed: what, and the line claiming it.
    endpoints: HashMap<String, usize>,
}

type Table<'i> = DeTable<'i>;
type Value<'i> = toml::Spanned<DeValue<'i>>;

impl Checker<'_> {
    /// Line and column (in characters) of a byte offset the parser gave.
    fn position(&self, offset: usize) -> (usize, usize) {
        // Bytes, so that an offset inside a character could never panic.
        let before = &self.text.as_bytes()[..offset.min(self.text.len())];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let column = String::from_utf8_lossy(&before[line_start..])
            .chars()
            .count()
            + 1;
        (line, column)
    }

    fn error(&mut self, span: Range<usize>, key: Option<&str>, message: String) {
        let (line, column) = self.position(span.start);
        self.errors.push(ConfigError {
            line,
            column,
            key: key.map(str::to_string),
            message,
        });
    }

    fn unknown_key(&mut self, span: Range<usize>, key: &str, what: &str, valid: &[String]) {
        let mut message = format!("not a key of {what}");
        let nearest = valid
            .iter()
            .map(|candidate| (strsim::damerau_levenshtein(key, candidate), candidate))
            .filter(|(distance, candidate)| *distance <= 2.max(candidate.len() / 3))
            .min();
        match nearest {
            Some((_, candidate)) => message.push_str(&format!("; did you mean `{candidate}`?")),
            None => message.push_str(&format!("; its keys are: {}", valid.join(", "))),
        }
        self.error(span, Some(key), message);
    }

    fn root(&mut self, root: &Table<'_>) {
        for (key, value) in root {
            match key.get_ref().as_ref() {
                "network" => match value.get_ref() {
                    DeValue::Array(networks) => {
                        for network in networks {
                            self.network(network);
                        }
                    }
                    _ => self.error(
                        value.span(),
                        Some("network"),
                        "networks are `[[network]]` tables, one per network".into(),
                    ),
                },
                "metrics" => match value.get_ref() {
                    DeValue::Table(table) => {
                        self.child("metrics", None, value.span(), table, &[]);
                    }
                    _ => self.error(
                        value.span(),
                        Some("metrics"),
                        "the exporter is a `[metrics]` table (`listen = \"ADDR:PORT\"`)".into(),
                    ),
                },
                other => {
                    let valid = vec!["network".to_string(), "metrics".to_string()];
                    self.unknown_key(key.span(), other, "the file", &valid);
                }
            }
        }
    }

    fn network(&mut self, value: &Value<'_>) {
        let DeValue::Table(table) = value.get_ref() else {
            self.error(
                value.span(),
                Some("network"),
                "a network is a `[[network]]` table".into(),
            );
            return;
        };
        let Some(name) = self.network_name(value.span(), table) else {
            return;
        };
        if self.config.networks.iter().any(|n| n.name == name) {
            self.error(
                value.span(),
                Some("name"),
                format!("network {name:?} is declared twice"),
            );
        }
        let skip: Vec<&str> = NETWORK_OWN_KEYS
            .iter()
            .chain(NETWORK_SERVICES.iter())
            .copied()
            .collect();
        if let Some((cli, _)) = self.table_to_cli("create", Some(&name), value.span(), table, &skip)
            && let Command::Create(args) = cli.command
        {
            match admin::create_options(&args) {
                Ok(options) => self.config.networks.push(NetworkPlan {
                    name: name.clone(),
                    options,
                }),
                Err(error) => self.error(
                    value.span(),
                    None,
                    crate::cli::error_message(&error).to_string(),
                ),
            }
        }
        for (key, value) in table {
            let key_name: &str = key.get_ref();
            if key_name == "port" {
                match value.get_ref() {
                    DeValue::Array(ports) => {
                        for port in ports {
                            self.port(&name, port);
                        }
                    }
                    _ => self.error(
                        value.span(),
                        Some("port"),
                        "ports are `[[network.port]]` tables, one per port".into(),
                    ),
                }
            } else if NETWORK_SERVICES.contains(&key_name) {
                match value.get_ref() {
                    DeValue::Table(service) => {
                        self.child(key_name, Some(&name), value.span(), service, &[]);
                    }
                    _ => self.error(
                        value.span(),
                        Some(key_name),
                        format!("`{key_name}` is a `[network.{key_name}]` table"),
                    ),
                }
            }
        }
    }

    fn network_name(&mut self, span: Range<usize>, table: &Table<'_>) -> Option<String> {
        let Some(name) = table.get("name") else {
            self.error(
                span,
                Some("name"),
                "a network needs a name (`name = \"lab\"`)".into(),
            );
            return None;
        };
        let Some(text) = name.get_ref().as_str() else {
            self.error(
                name.span(),
                Some("name"),
                format!("a name is a string, not {}", a_type(name.get_ref())),
            );
            return None;
        };
        if let Err(error) = crate::network::check_name(text) {
            self.error(name.span(), Some("name"), error.to_string());
            return None;
        }
        Some(text.to_string())
    }

    fn port(&mut self, network: &str, value: &Value<'_>) {
        let DeValue::Table(table) = value.get_ref() else {
            self.error(
                value.span(),
                Some("port"),
                "a port is a `[[network.port]]` table".into(),
            );
            return;
        };
        let Some(kind) = table.get("type") else {
            self.error(
                value.span(),
                Some("type"),
                format!(
                    "a port needs a type: `type = \"{}\"`",
                    PORT_TYPES.join("\" | \"")
                ),
            );
            return;
        };
        let Some(kind_name) = kind.get_ref().as_str().filter(|k| PORT_TYPES.contains(k)) else {
            let valid: Vec<String> = PORT_TYPES.iter().map(|t| t.to_string()).collect();
            let written = kind.get_ref().as_str().unwrap_or("");
            let mut message = format!("not a port type; the types are: {}", valid.join(", "));
            if let Some((_, nearest)) = valid
                .iter()
                .map(|t| (strsim::damerau_levenshtein(written, t), t))
                .filter(|(distance, _)| *distance <= 2)
                .min()
            {
                message = format!("`{written}` is not a port type; did you mean `{nearest}`?");
            }
            self.error(kind.span(), Some("type"), message);
            return;
        };
        let kind_name = kind_name.to_string();
        self.claim_endpoints(&kind_name, table);
        self.child(&kind_name, Some(network), value.span(), table, &["type"]);
    }

    /// Refuses a socket path, or an interface in a namespace, that two ports claim.
    fn claim_endpoints(&mut self, kind: &str, table: &Table<'_>) {
        let mut claims = Vec::new();
        for key in ["socket", "listen"] {
            if let Some(value) = table.get(key) {
                let values: Vec<&Value<'_>> = match value.get_ref() {
                    DeValue::Array(items) => items.iter().collect(),
                    _ => vec![value],
                };
                for item in values {
                    if let Some(path) = item.get_ref().as_str() {
                        claims.push((format!("socket {path}"), key, item.span()));
                    }
                }
            }
        }
        if kind == "tap"
            && let Some(ifnames) = table.get("ifname")
        {
            // `netns` once for every interface, or once per interface in order.
            let netns: Vec<Option<&str>> = match table.get("netns").map(|n| n.get_ref()) {
                None => Vec::new(),
                Some(DeValue::Array(items)) => items.iter().map(|n| n.get_ref().as_str()).collect(),
                Some(one) => vec![one.as_str()],
            };
            let values: Vec<&Value<'_>> = match ifnames.get_ref() {
                DeValue::Array(items) => items.iter().collect(),
                _ => vec![ifnames],
            };
            for (i, item) in values.iter().enumerate() {
                let namespace = match netns.as_slice() {
                    [] => None,
                    [one] => *one,
                    several => several.get(i).copied().flatten(),
                };
                let where_ =
                    namespace.map_or("the host".to_string(), |ns| format!("namespace {ns}"));
                if let Some(ifname) = item.get_ref().as_str() {
                    claims.push((
                        format!("interface {ifname} in {where_}"),
                        "ifname",
                        item.span(),
                    ));
                }
            }
        }
        for (what, key, span) in claims {
            let line = self.position(span.start).0;
            match self.endpoints.get(&what) {
                Some(&first) => self.error(
                    span,
                    Some(key),
                    format!("{what} is already used at line {first}"),
                ),
                None => {
                    self.endpoints.insert(what, line);
                }
            }
        }
    }

    /// A table that runs `subcommand`: checked, and its command line kept.
    fn child(
        &mut self,
        subcommand: &str,
        network: Option<&str>,
        span: Range<usize>,
        table: &Table<'_>,
        skip: &[&str],
    ) {
        let Some((cli, mut args)) =
            self.table_to_cli(subcommand, network, span.clone(), table, skip)
        else {
            return;
        };
        if let Command::Tap(tap) = &cli.command
            && let Err(e) = tap.namespaces()
        {
            let at = table.get("netns").map_or(span.clone(), |n| n.span());
            self.error(at, Some("netns"), e.to_string());
            return;
        }
        // A TAP that `up` creates keeps its MAC across restarts.
        if let Command::Tap(tap) = &cli.command
            && tap.mac.is_none()
            && !tap.attach
            && let [ifname] = tap.ifnames.as_slice()
            && let Some(network) = network
        {
            let mac = derived_tap_mac(network, tap.netns.first().map(String::as_str), ifname);
            args.push(format!("--mac={mac}"));
        }
        let line = self.position(span.start).0;
        let plan = ChildPlan {
            subcommand: subcommand.to_string(),
            network: network.map(str::to_string),
            args,
            line,
        };
        if let Some(twin) = self.config.children.iter().find(|c| c.args == plan.args) {
            let message = format!("the same as the table at line {}", twin.line);
            self.error(span, None, message);
            return;
        }
        self.config.children.push(plan);
    }

    /// Checks `table` as the options of `subcommand` and parses the command line it makes
    /// as the command would: the parsed command and that command line (without the
    /// program's name), or `None` after reporting what is wrong.
    fn table_to_cli(
        &mut self,
        subcommand: &str,
        network: Option<&str>,
        span: Range<usize>,
        table: &Table<'_>,
        skip: &[&str],
    ) -> Option<(Cli, Vec<String>)> {
        let what = match subcommand {
            "create" => "a network".to_string(),
            s if PORT_TYPES.contains(&s) => format!("a {s} port"),
            s if network.is_some() => format!("[network.{s}]"),
            s => format!("[{s}]"),
        };
        let Some(definition) = self.cli.find_subcommand(subcommand).cloned() else {
            // Said with the command line the table would make, so the user sees what
            // a build with that command would run.
            let (options, _) = options(None, table, skip);
            let line = command_line(subcommand, network, &options).join(" ");
            self.error(
                span,
                None,
                format!("this guestnet has no `{subcommand}` command to run `guestnet {line}`"),
            );
            return None;
        };
        let (options, problems) = options(Some(&definition), table, skip);
        if !problems.is_empty() {
            for problem in problems {
                match problem {
                    Problem::Unknown { key, span } => {
                        let mut valid = keys(&definition);
                        valid.extend(skip.iter().map(|s| s.to_string()));
                        valid.sort();
                        self.unknown_key(span, &key, &what, &valid);
                    }
                    Problem::Value { key, span, message } => self.error(span, Some(&key), message),
                }
            }
            return None;
        }
        let args = command_line(subcommand, network, &options);
        match Cli::try_parse_from(
            std::iter::once("guestnet").chain(args.iter().map(String::as_str)),
        ) {
            Ok(cli) => Some((cli, args)),
            Err(error) => {
                use clap::error::{ContextKind, ContextValue, ErrorKind};
                if error.kind() == ErrorKind::MissingRequiredArgument
                    && let Some(ContextValue::Strings(args)) = error.get(ContextKind::InvalidArg)
                {
                    let missing: Vec<String> = args
                        .iter()
                        .map(|arg| match option_key(arg) {
                            Some(key) => format!("`{key}`"),
                            None => arg.clone(),
                        })
                        .collect();
                    self.error(
                        span,
                        None,
                        format!("{what} needs the key {}", missing.join(" and ")),
                    );
                    return None;
                }
                let text = error.to_string();
                let first = text.lines().next().unwrap_or("").trim();
                let message = first.strip_prefix("error: ").unwrap_or(first).to_string();
                // The option clap names, back to its key and where that key is.
                let key = match error.get(ContextKind::InvalidArg) {
                    Some(ContextValue::String(arg)) => option_key(arg),
                    _ => None,
                };
                let located = key
                    .as_deref()
                    .and_then(|key| table.get_key_value(key))
                    .map(|(k, _)| (k.get_ref().to_string(), k.span()));
                match located {
                    Some((key, key_span)) => self.error(key_span, Some(&key), message),
                    None => {
                        let message = match &key {
                            Some(key) => {
                                format!("{what}: missing or conflicting key `{key}`: {message}")
                            }
                            None => format!("{what}: {message}"),
                        };
                        self.error(span, None, message)
                    }
                }
                None
            }
        }
    }
}

/// The key of an option as clap names it (`--max-peers <MAX_PEERS>` → `max_peers`).
fn option_key(arg: &str) -> Option<String> {
    arg.strip_prefix("--")
        .and_then(|long| long.split([' ', '=']).next())
        .map(|long| long.replace('-', "_"))
}

/// The keys a subcommand's table takes: its long options, dashes as underscores.
pub fn keys(definition: &clap::Command) -> Vec<String> {
    definition
        .get_arguments()
        .filter(|arg| !arg.is_hide_set() && !arg.is_positional())
        .filter_map(|arg| arg.get_long())
        .filter(|long| !NOT_KEYS.contains(long))
        .map(|long| long.replace('-', "_"))
        .collect()
}

/// What is wrong with one key of a table.
#[derive(Debug)]
enum Problem {
    Unknown {
        key: String,
        span: Range<usize>,
    },
    Value {
        key: String,
        span: Range<usize>,
        message: String,
    },
}

/// A table's keys as long options (`--key=value`, repeated for an array, bare for `true`),
/// in sorted key order, checked against `definition` when there is one. Without one (a
/// subcommand this build lacks) any key is taken, a boolean as a flag and an array as a
/// repeated option.
fn options(
    definition: Option<&clap::Command>,
    table: &Table<'_>,
    skip: &[&str],
) -> (Vec<String>, Vec<Problem>) {
    let mut entries: Vec<(&str, &Value<'_>, Range<usize>)> = table
        .iter()
        .filter(|(key, _)| !skip.contains(&key.get_ref().as_ref()))
        .map(|(key, value)| (key.get_ref().as_ref(), value, key.span()))
        .collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for (key, value, key_span) in entries {
        let long = key.replace('_', "-");
        let (flag, repeats) = match definition {
            Some(definition) => {
                let arg = definition.get_arguments().find(|arg| {
                    !arg.is_hide_set()
                        && arg.get_long() == Some(long.as_str())
                        && !NOT_KEYS.contains(&long.as_str())
                });
                // Dashes are written as underscores; a key spelled with dashes is
                // unknown, and the suggestion shows the spelling.
                match arg.filter(|_| !key.contains('-')) {
                    Some(arg) => (
                        !arg.get_action().takes_values(),
                        matches!(arg.get_action(), ArgAction::Append),
                    ),
                    None => {
                        problems.push(Problem::Unknown {
                            key: key.to_string(),
                            span: key_span,
                        });
                        continue;
                    }
                }
            }
            None => (value.get_ref().is_bool(), value.get_ref().is_array()),
        };
        let mut bad = |message: String| {
            problems.push(Problem::Value {
                key: key.to_string(),
                span: value.span(),
                message,
            })
        };
        match value.get_ref() {
            DeValue::Boolean(on) if flag => {
                if *on {
                    out.push(format!("--{long}"));
                }
            }
            DeValue::Boolean(_) => bad(format!(
                "takes a value, not true or false (`{key} = \"...\"`)"
            )),
            _ if flag => bad(format!(
                "is a flag: write `{key} = true`, or leave it out, not {}",
                a_type(value.get_ref())
            )),
            DeValue::Array(_) if !repeats => {
                bad(format!("takes one value, not an array (`{key} = \"...\"`)"))
            }
            DeValue::Array(items) => {
                for item in items {
                    match scalar(item.get_ref()) {
                        Some(text) => out.push(format!("--{long}={text}")),
                        None => problems.push(Problem::Value {
                            key: key.to_string(),
                            span: item.span(),
                            message: format!(
                                "takes strings or numbers, not {}",
                                a_type(item.get_ref())
                            ),
                        }),
                    }
                }
            }
            other => match scalar(other) {
                Some(text) => out.push(format!("--{long}={text}")),
                None => bad(format!(
                    "takes a string or a number, not {}",
                    a_type(value.get_ref())
                )),
            },
        }
    }
    (out, problems)
}

/// A value's type with its article, for messages.
fn a_type(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "true or false",
        DeValue::Datetime(_) => "a date",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// A string or a number as the command line writes it.
fn scalar(value: &DeValue<'_>) -> Option<String> {
    match value {
        DeValue::String(text) => Some(text.to_string()),
        DeValue::Integer(integer) => {
            let digits = integer.as_str().replace('_', "");
            i64::from_str_radix(&digits, integer.radix())
                .ok()
                .map(|n| n.to_string())
        }
        DeValue::Float(float) => Some(float.as_str().replace('_', "")),
        _ => None,
    }
}

/// `subcommand [NETWORK] options…`.
fn command_line(subcommand: &str, network: Option<&str>, options: &[String]) -> Vec<String> {
    let mut args = vec![subcommand.to_string()];
    args.extend(network.map(str::to_string));
    args.extend(options.iter().cloned());
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<ConfigError> {
        parse("test.toml", text).expect_err("refused").errors
    }

    #[test]
    fn a_port_becomes_its_subcommand_with_sorted_options_and_a_derived_mac() {
        let config = parse(
            "test.toml",
            "[[network]]\nname = \"lab\"\nmtu = 9000\n\n[[network.port]]\ntype = \"tap\"\nnetns = \"red\"\nifname = \"gn0\"\nlock_mac = true\nisolated = false\n",
        )
        .expect("accepted");
        assert_eq!(config.networks.len(), 1);
        assert_eq!(config.networks[0].options.geometry.mtu, 9000);
        let mac = derived_tap_mac("lab", Some("red"), "gn0");
        assert_eq!(
            config.children[0].args,
            vec![
                "tap".to_string(),
                "lab".into(),
                "--ifname=gn0".into(),
                "--lock-mac".into(),
                "--netns=red".into(),
                format!("--mac={mac}"),
            ]
        );
        assert_eq!(config.children[0].line, 5);
    }

    #[test]
    fn an_array_repeats_the_option_in_one_child() {
        let config = parse(
            "t",
            "[[network]]\nname = \"lab\"\n[[network.port]]\ntype = \"vhost-user\"\nsocket = [\"/run/a.sock\", \"/run/b.sock\"]\n",
        )
        .expect("accepted");
        assert_eq!(
            config.children[0].args,
            [
                "vhost-user",
                "lab",
                "--socket=/run/a.sock",
                "--socket=/run/b.sock"
            ]
        );
    }

    #[test]
    fn a_vhost_user_port_takes_its_steering_and_refuses_an_unknown_one() {
        let port = |steering: &str| {
            format!(
                "[[network]]\nname = \"lab\"\n[[network.port]]\ntype = \"vhost-user\"\nsocket = \"/run/a.sock\"\nqueues = 2\nsteering = \"{steering}\"\n"
            )
        };
        let config = parse("t", &port("flow")).expect("accepted");
        assert_eq!(
            config.children[0].args,
            [
                "vhost-user",
                "lab",
                "--queues=2",
                "--socket=/run/a.sock",
                "--steering=flow"
            ]
        );
        let errors = errors(&port("rss"));
        assert_eq!(errors[0].key.as_deref(), Some("steering"), "{errors:?}");
    }

    #[test]
    fn a_derived_mac_is_stable_local_unicast_and_differs_by_name() {
        let a = derived_tap_mac("lab", Some("red"), "gn0");
        assert_eq!(a, derived_tap_mac("lab", Some("red"), "gn0"));
        assert_ne!(a, derived_tap_mac("lab", Some("blue"), "gn0"));
        assert_ne!(a, derived_tap_mac("lab", None, "gn0"));
        assert_eq!(a.0[0] & 0x03, 0x02, "locally administered, unicast");
    }

    #[test]
    fn a_given_mac_or_an_attached_tap_gets_no_derived_one() {
        let config = parse(
            "t",
            "[[network]]\nname = \"lab\"\n[[network.port]]\ntype = \"tap\"\nifname = \"a\"\nmac = \"02:00:00:00:00:01\"\n[[network.port]]\ntype = \"tap\"\nifname = \"b\"\nattach = true\n",
        )
        .expect("accepted");
        assert_eq!(
            config.children[0]
                .args
                .iter()
                .filter(|a| a.starts_with("--mac"))
                .count(),
            1
        );
        assert!(
            !config.children[1]
                .args
                .iter()
                .any(|a| a.starts_with("--mac"))
        );
    }

    #[test]
    fn a_typo_names_its_line_and_the_nearest_key() {
        let errors = errors(
            "[[network]]\nname = \"lab\"\n\n[[network.port]]\ntype = \"tap\"\nifnme = \"gn0\"\n",
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!((errors[0].line, errors[0].column), (6, 1));
        assert_eq!(errors[0].key.as_deref(), Some("ifnme"));
        assert!(
            errors[0].message.contains("did you mean `ifname`?"),
            "{errors:?}"
        );
    }

    #[test]
    fn a_key_with_dashes_is_told_its_underscore_spelling() {
        let errors = errors("[[network]]\nname = \"lab\"\nmax-peers = 8\n");
        assert!(errors[0].message.contains("`max_peers`"), "{errors:?}");
    }

    #[test]
    fn a_wrong_type_is_refused_with_its_key() {
        let errors = errors(
            "[[network]]\nname = \"lab\"\n[[network.port]]\ntype = \"tap\"\nifname = \"gn0\"\nattach = \"yes\"\nmac = [\"02:00:00:00:00:01\", \"02:00:00:00:00:02\"]\n",
        );
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(errors[0].key.as_deref(), Some("attach"));
        assert!(errors[0].message.contains("is a flag"), "{errors:?}");
        assert_eq!(errors[1].key.as_deref(), Some("mac"));
        assert!(errors[1].message.contains("one value"), "{errors:?}");
    }

    #[test]
    fn a_tap_table_names_one_namespace_or_one_per_interface() {
        let config = parse(
            "test.toml",
            "[[network]]\nname = \"lab\"\n[[network.port]]\ntype = \"tap\"\nifname = [\"gn0\", \"gn0\"]\nnetns = [\"red\", \"blue\"]\n",
        )
        .expect("one namespace per interface");
        assert_eq!(config.children.len(), 1);
        assert!(
            config.children[0]
                .args
                .contains(&"--netns=blue".to_string()),
            "{:?}",
            config.children[0].args
        );
        let refused = errors(
            "[[network]]\nname = \"lab\"\n[[network.port]]\ntype = \"tap\"\nifname = [\"a\", \"b\", \"c\"]\nnetns = [\"red\", \"blue\"]\n",
        );
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!(refused[0].key.as_deref(), Some("netns"));
        assert!(
            refused[0].message.contains("once per --ifname"),
            "{refused:?}"
        );
        // The same interface name in two namespaces is two interfaces; twice in one is not.
        let twice = errors(
            "[[network]]\nname = \"lab\"\n[[network.port]]\ntype = \"tap\"\nifname = [\"gn0\", \"gn0\"]\nnetns = [\"red\", \"red\"]\n",
        );
        assert_eq!(twice.len(), 1, "{twice:?}");
        assert!(twice[0].message.contains("already used"), "{twice:?}");
    }

    #[test]
    fn a_value_the_command_refuses_is_refused_at_its_key() {
        let errors = errors("[[network]]\nname = \"lab\"\nmtu = \"big\"\n");
        assert_eq!(errors[0].key.as_deref(), Some("mtu"));
        assert_eq!(errors[0].line, 3);
        let errors = errors_of_mac();
        assert_eq!(errors[0].key.as_deref(), Some("mac"));
    }

    fn errors_of_mac() -> Vec<ConfigError> {
        errors(
            "[[network]]\nname = \"lab\"\n[[network.port]]\ntype = \"stream\"\nlisten = \"/run/s\"\nmac = \"nonsense\"\n",
        )
    }

    #[test]
    fn an_unknown_port_type_is_refused_with_the_nearest() {
        let errors =
            errors("[[network]]\nname = \"lab\"\n[[network.port]]\ntype = \"vhostuser\"\n");
        assert_eq!(errors[0].key.as_deref(), Some("type"));
        assert!(errors[0].message.contains("`vhost-user`"), "{errors:?}");
    }

    #[test]
    fn a_missing_required_option_names_it() {
        let errors = errors("[[network]]\nname = \"lab\"\n[[network.port]]\ntype = \"tap\"\n");
        assert_eq!(errors[0].line, 3, "{errors:?}");
        assert!(
            errors[0].message.contains("needs the key `ifname`"),
            "{errors:?}"
        );
    }

    #[test]
    fn a_socket_path_used_twice_is_refused() {
        let errors = errors(
            "[[network]]\nname = \"lab\"\n[[network.port]]\ntype = \"vhost-user\"\nsocket = \"/run/a\"\n[[network.port]]\ntype = \"stream\"\nlisten = \"/run/a\"\n",
        );
        assert_eq!(errors[0].line, 8, "{errors:?}");
        assert!(
            errors[0].message.contains("already used at line 5"),
            "{errors:?}"
        );
    }

    #[test]
    fn toml_syntax_errors_have_a_position() {
        let errors = errors("[[network]]\nname = \"lab\n");
        assert_eq!(errors[0].line, 2, "{errors:?}");
    }

    #[test]
    fn metrics_takes_the_exporters_options() {
        let config = parse("t", "[metrics]\nlisten = \"127.0.0.1:9469\"\n").expect("accepted");
        assert_eq!(
            config.children[0].args,
            ["metrics", "--listen=127.0.0.1:9469"]
        );
        assert_eq!(config.children[0].network, None);
    }

    /// The mapping of a table for a subcommand this build may lack.
    fn generic_command_line(subcommand: &str, network: Option<&str>, text: &str) -> Vec<String> {
        let table = DeTable::parse(text).expect("valid TOML");
        let (options, problems) = options(None, table.get_ref(), &[]);
        assert!(problems.is_empty(), "{problems:?}");
        command_line(subcommand, network, &options)
    }

    #[test]
    fn a_service_table_maps_to_its_subcommand_even_before_it_exists() {
        let args = generic_command_line(
            "dhcp",
            Some("lab"),
            "subnet = \"10.0.0.0/24\"\nrange = \"10.0.0.10-10.0.0.99\"\nhost = [\"52:54:00:00:00:01=10.0.0.5\"]\ndns = [\"10.0.0.1\"]\nauthoritative = true\nquiet = false\nlease_time = 3600\n",
        );
        assert_eq!(
            args,
            [
                "dhcp",
                "lab",
                "--authoritative",
                "--dns=10.0.0.1",
                "--host=52:54:00:00:00:01=10.0.0.5",
                "--lease-time=3600",
                "--range=10.0.0.10-10.0.0.99",
                "--subnet=10.0.0.0/24",
            ]
        );
    }

    #[test]
    fn every_port_type_is_a_subcommand_with_a_network_argument() {
        let cli = Cli::command();
        for kind in PORT_TYPES {
            let definition = cli.find_subcommand(kind).expect(kind);
            assert!(definition.get_positionals().next().is_some(), "{kind}");
            assert!(!keys(definition).is_empty(), "{kind}");
        }
    }
}
