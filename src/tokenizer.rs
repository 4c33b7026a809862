//! GPT-2's byte-level BPE through the `tokenizers` crate: tokenizer.json, or vocab.json + merges.txt.

use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::Tokenizer;

use crate::error::{Error, Result};

pub const END_OF_TEXT: &str = "<|endoftext|>";

pub struct Gpt2Tokenizer {
    inner: Tokenizer,
}

impl Gpt2Tokenizer {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let inner = Tokenizer::from_bytes(bytes)
            .map_err(|e| Error::Tokenizer(format!("tokenizer.json is not readable: {e}")))?;
        Ok(Gpt2Tokenizer { inner })
    }

    /// tokenizer.json when present, else vocab.json + merges.txt (GPT-2's original files).
    pub fn load_dir(dir: &Path) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        if json.exists() {
            let bytes = std::fs::read(&json).map_err(|e| Error::io(&json, e))?;
            return Self::from_bytes(&bytes);
        }
        let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        if vocab.exists() && merges.exists() {
            let bpe = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
                .build()
                .map_err(|e| Error::Tokenizer(format!("vocab.json/merges.txt: {e}")))?;
            let mut inner = Tokenizer::new(bpe);
            inner.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
            inner.with_decoder(Some(ByteLevelDecoder::default()));
            return Ok(Gpt2Tokenizer { inner });
        }
        Err(Error::Tokenizer(format!(
            "{} has no tokenizer.json (nor vocab.json + merges.txt)",
            dir.display()
        )))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Encodes text exactly as given: no special tokens are added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(format!("cannot encode {text:?}: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn end_of_text(&self) -> Result<u32> {
        self.inner
            .token_to_id(END_OF_TEXT)
            .ok_or_else(|| Error::Tokenizer(format!("the tokenizer has no {END_OF_TEXT} token")))
    }

    /// The text of one token, as a person reads it (byte-level markers decoded).
    pub fn token_text(&self, id: u32) -> String {
        self.inner
            .decode(&[id], false)
            .unwrap_or_else(|_| format!("<{id}>"))
    }

    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, false).unwrap_or_default()
    }
}
