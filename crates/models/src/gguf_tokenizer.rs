//! The tokenizer embedded in a GGUF file (`tokenizer.ggml.*`, GPT-2 style byte-level BPE, as
//! SmolLM2 ships it) as a `tokenizers::Tokenizer`, with the chat template's control tokens kept
//! whole, so training encodes and decodes text the way the served model does.

use std::path::Path;

use candle_core::quantized::gguf_file;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

/// The GPT-2 pre-tokenizer pattern (what mistral.rs uses for GGUF BPE tokenizers).
const SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A GGUF file's tokenizer and its end-of-sequence token.
pub struct GgufTokenizer {
    pub tokenizer: Tokenizer,
    pub eos: u32,
    /// The ids of the control tokens (chat markers such as `<|im_end|>`).
    pub control: Vec<u32>,
}

impl GgufTokenizer {
    pub fn from_gguf(path: &Path) -> anyhow::Result<Self> {
        let mut reader = std::io::BufReader::new(std::fs::File::open(path)?);
        let content = gguf_file::Content::read(&mut reader)?;
        Self::from_metadata(&content.metadata)
    }

    pub fn from_metadata(
        md: &std::collections::HashMap<String, gguf_file::Value>,
    ) -> anyhow::Result<Self> {
        let get = |k: &str| {
            md.get(k)
                .ok_or_else(|| anyhow::anyhow!("no {k} in the GGUF metadata"))
        };
        let model = get("tokenizer.ggml.model")?.to_string()?;
        anyhow::ensure!(
            model == "gpt2",
            "GGUF tokenizer kind {model}: only gpt2 (byte-level BPE) is supported"
        );
        let tokens: Vec<String> = get("tokenizer.ggml.tokens")?
            .to_vec()?
            .iter()
            .map(|v| v.to_string().cloned())
            .collect::<Result<_, _>>()?;
        let merges: Vec<(String, String)> = get("tokenizer.ggml.merges")?
            .to_vec()?
            .iter()
            .filter_map(|v| {
                let s = v.to_string().ok()?;
                let (a, b) = s.split_once(' ')?;
                Some((a.to_owned(), b.to_owned()))
            })
            .collect();
        let types: Vec<i32> = match md.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()?
                .iter()
                .map(|t| t.to_i32())
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        let eos = get("tokenizer.ggml.eos_token_id")?.to_u32()?;
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| anyhow::anyhow!("GGUF BPE: {e}"))?;
        let mut tokenizer = Tokenizer::new(bpe);
        let split = Split::new(
            SplitPattern::Regex(SPLIT.to_owned()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| anyhow::anyhow!("pre-tokenizer: {e}"))?;
        tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
            PreTokenizerWrapper::Split(split),
            PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false)),
        ])));
        tokenizer.with_decoder(Some(ByteLevelDecoder::new(false, false, false)));
        // Control tokens (type 3) and the end token stay whole.
        let mut control: Vec<u32> = types
            .iter()
            .enumerate()
            .filter(|(_, t)| **t == 3)
            .map(|(i, _)| i as u32)
            .collect();
        if !control.contains(&eos) {
            control.push(eos);
        }
        let special: Vec<AddedToken> = control
            .iter()
            .filter_map(|&i| tokens.get(i as usize))
            .map(|t| AddedToken::from(t.clone(), true))
            .collect();
        tokenizer.add_special_tokens(&special);
        Ok(Self {
            tokenizer,
            eos,
            control,
        })
    }

    pub fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        Ok(self
            .tokenizer
            .encode(text, false)
            .map_err(|e| anyhow::anyhow!("tokenize: {e}"))?
            .get_ids()
            .to_vec())
    }

    /// Text of `ids`, control tokens left out.
    pub fn decode(&self, ids: &[u32]) -> anyhow::Result<String> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| anyhow::anyhow!("detokenize: {e}"))
    }

    /// A ChatML prompt (SmolLM2's template) ending where the assistant's answer starts.
    pub fn chatml(messages: &[(String, String)]) -> String {
        let mut s = String::new();
        for (role, content) in messages {
            s.push_str(&format!("<|im_start|>{role}\n{content}<|im_end|>\n"));
        }
        s.push_str("<|im_start|>assistant\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smollm2_tokenizer_round_trips_and_keeps_chat_markers_whole() {
        let t = GgufTokenizer::from_gguf(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
        )))
        .unwrap();
        let text = "Crush your rivals: 3 steps, 42% more.\nDon't stop!";
        let ids = t.encode(text).unwrap();
        assert_eq!(t.decode(&ids).unwrap(), text);
        let prompt = GgufTokenizer::chatml(&[("user".into(), "Hi".into())]);
        let ids = t.encode(&prompt).unwrap();
        let start = t.tokenizer.token_to_id("<|im_start|>").unwrap();
        let end = t.tokenizer.token_to_id("<|im_end|>").unwrap();
        assert_eq!(ids[0], start, "{ids:?}");
        assert!(ids.contains(&end), "{ids:?}");
        assert!(t.control.contains(&end));
        // Control tokens are left out of decoded text.
        assert_eq!(t.decode(&ids).unwrap(), "user\nHi\nassistant\n");
    }
}
