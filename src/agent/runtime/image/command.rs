//! `cluster images import | ls | rm | pull`: the command-line face of [`super::ImageService`],
//! working on the same store as the agent (`<data-dir>/agent/runtime`).
//!
//! Prints results to the writer it is given; owns no state of its own.

use std::collections::HashSet;
use std::io::Write;

use super::registries::Registries;
use super::{ImageError, ImageService, ImageServiceConfig};
use crate::config::{ImagesAction, ImagesConfig};

/// Why `cluster images` failed.
#[derive(Debug, thiserror::Error)]
pub enum ImagesCommandError {
    #[error(transparent)]
    Registries(#[from] super::registries::RegistriesError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("{failed} of {total} failed")]
    Partial { failed: usize, total: usize },
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
}

/// Runs one `cluster images` command, printing to `out` (errors of single items go to
/// `err`, and the command fails at the end when any did).
pub async fn run(
    config: &ImagesConfig,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), ImagesCommandError> {
    let registries = Registries::load(&config.private_registry, config.private_registry_required)?;
    let service = ImageService::open(ImageServiceConfig::new(
        &config.data_dir.agent_runtime(),
        registries,
    ))?;
    match &config.action {
        ImagesAction::Import(files) => {
            let mut failed = 0;
            for file in files {
                match service.import(file).await {
                    Ok(images) => {
                        for image in images {
                            let names = if image.names.is_empty() {
                                "<none>".to_string()
                            } else {
                                image.names.join(", ")
                            };
                            writeln!(out, "imported {names} ({})", image.id)?;
                        }
                    }
                    Err(error) => {
                        failed += 1;
                        writeln!(err, "cluster: import {}: {error}", file.display())?;
                    }
                }
            }
            done(failed, files.len())
        }
        ImagesAction::Pull(references) => {
            let mut failed = 0;
            for reference in references {
                match service.pull(reference).await {
                    Ok(image) => writeln!(out, "pulled {reference} ({})", image.id)?,
                    Err(error) => {
                        failed += 1;
                        writeln!(err, "cluster: pull {reference}: {error}")?;
                    }
                }
            }
            done(failed, references.len())
        }
        ImagesAction::Remove(references) => {
            let mut failed = 0;
            for reference in references {
                match service.remove(reference, &HashSet::new()) {
                    Ok(removed) if removed.is_empty() => writeln!(out, "untagged {reference}")?,
                    Ok(removed) => {
                        for id in removed {
                            writeln!(out, "deleted {id}")?;
                        }
                    }
                    Err(error) => {
                        failed += 1;
                        writeln!(err, "cluster: rm {reference}: {error}")?;
                    }
                }
            }
            done(failed, references.len())
        }
        ImagesAction::List { quiet } => {
            let images = service.list()?;
            if *quiet {
                for image in &images {
                    writeln!(out, "{}", image.id)?;
                }
                return Ok(());
            }
            // As `crictl images`: one line per name, image ID shortened to 13 characters.
            let mut rows = vec![[
                "IMAGE".to_string(),
                "TAG".to_string(),
                "IMAGE ID".to_string(),
                "SIZE".to_string(),
            ]];
            for image in &images {
                let short = image.id.hex().chars().take(13).collect::<String>();
                let size = human_size(image.size);
                if image.names.is_empty() {
                    rows.push(["<none>".into(), "<none>".into(), short, size]);
                    continue;
                }
                for name in &image.names {
                    let (repository, tag) = match name.rsplit_once(':') {
                        Some((repo, tag)) if !tag.contains('/') => {
                            (repo.to_string(), tag.to_string())
                        }
                        _ => (name.clone(), "<none>".to_string()),
                    };
                    rows.push([repository, tag, short.clone(), size.clone()]);
                }
            }
            let widths: Vec<usize> = (0..4)
                .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
                .collect();
            for row in rows {
                writeln!(
                    out,
                    "{:<w0$}   {:<w1$}   {:<w2$}   {}",
                    row[0],
                    row[1],
                    row[2],
                    row[3],
                    w0 = widths[0],
                    w1 = widths[1],
                    w2 = widths[2]
                )?;
            }
            Ok(())
        }
    }
}

fn done(failed: usize, total: usize) -> Result<(), ImagesCommandError> {
    if failed == 0 {
        Ok(())
    } else {
        Err(ImagesCommandError::Partial { failed, total })
    }
}

/// `2.1MB`, as crictl prints sizes (powers of 1000).
fn human_size(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < units.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        let number = format!("{value:.2}");
        let number = number.trim_end_matches('0').trim_end_matches('.');
        format!("{number}{}", units[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::human_size;

    #[test]
    fn sizes_are_human() {
        assert_eq!(human_size(512), "512B");
        assert_eq!(human_size(2_140_160), "2.14MB");
        assert_eq!(human_size(3_000_000), "3MB");
    }
}
