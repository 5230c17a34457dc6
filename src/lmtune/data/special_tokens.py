"""The two tokens every lmtune document is built around: the start token (BOS, else EOS)
before it and the end token (EOS) after it, which the model learns to stop with."""

from lmtune.errors import UserError


def start_token_id(tokenizer) -> int:
    """The token every document starts with (and generation starts from): BOS, else EOS."""
    if tokenizer.bos_token_id is not None:
        return tokenizer.bos_token_id
    return eos_token_id(tokenizer)


def eos_token_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise UserError("the model's tokenizer has no end-of-text (EOS) token, so a fine-tuned "
                        "model could not learn where an example ends",
                        hint="pick a model whose tokenizer defines eos_token, or set "
                             "tokenizer.eos_token")
    return tokenizer.eos_token_id
