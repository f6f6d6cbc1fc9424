//! The Touché23-ValueEval files: arguments and their 20 value-category labels.

use std::path::Path;

use super::CATEGORIES;

#[derive(Debug, Clone)]
pub struct Argument {
    pub id: String,
    pub conclusion: String,
    pub stance: String,
    pub premise: String,
    /// 0/1 per category, in [`CATEGORIES`] order.
    pub labels: [u8; 20],
}

impl Argument {
    /// The text the detector sees. Only the premise: at serving time the detector reads
    /// answers, not (conclusion, stance, premise) triples.
    pub fn text(&self) -> &str {
        &self.premise
    }
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Read `arguments-SPLIT.tsv` and `labels-SPLIT.tsv` from `dir`. Fields are tab-separated
/// with no quoting (three premises start with a double quote).
pub fn load_split(dir: &Path, split: &str) -> Result<Vec<Argument>, String> {
    let args_path = dir.join(format!("arguments-{split}.tsv"));
    let labels_path = dir.join(format!("labels-{split}.tsv"));
    let args_text = read(&args_path)?;
    let labels_text = read(&labels_path)?;

    let mut labels_lines = labels_text.lines();
    let header = labels_lines
        .next()
        .ok_or_else(|| format!("{}: empty", labels_path.display()))?;
    let cols: Vec<&str> = header.split('\t').collect();
    // Map file columns to our category order, so a reordered file still reads right.
    let mut col_of = [usize::MAX; 20];
    for (c, name) in CATEGORIES.iter().enumerate() {
        col_of[c] = cols
            .iter()
            .position(|h| h.trim() == *name)
            .ok_or_else(|| format!("{}: no column {name:?}", labels_path.display()))?;
    }
    let mut labels = std::collections::HashMap::new();
    for (n, line) in labels_lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        let mut l = [0u8; 20];
        for c in 0..20 {
            l[c] = match f.get(col_of[c]).map(|s| s.trim()) {
                Some("1") => 1,
                Some("0") => 0,
                other => {
                    return Err(format!(
                        "{} line {}: bad label {other:?}",
                        labels_path.display(),
                        n + 2
                    ));
                }
            };
        }
        labels.insert(f[0].trim().to_owned(), l);
    }

    let mut out = Vec::new();
    for (n, line) in args_text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 4 {
            return Err(format!(
                "{} line {}: expected 4 fields",
                args_path.display(),
                n + 1
            ));
        }
        let id = f[0].trim().to_owned();
        let l = *labels
            .get(&id)
            .ok_or_else(|| format!("{}: no labels for {id}", labels_path.display()))?;
        out.push(Argument {
            id,
            conclusion: f[1].to_owned(),
            stance: f[2].to_owned(),
            premise: f[3].to_owned(),
            labels: l,
        });
    }
    Ok(out)
}
