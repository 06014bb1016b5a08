"""The end-to-end NLHF pipeline: tokenizer -> data -> SFT -> pairs -> judges -> policies -> evaluation."""
