//! A worker project: its config file (Warren's or wrangler's, with
//! environments) and its bundle (esbuild, as wrangler bundles).

pub mod bundle;
pub mod config;
pub mod dotenv;

pub use bundle::{Bundle, bundle};
pub use config::{Project, find_config, load_project};
