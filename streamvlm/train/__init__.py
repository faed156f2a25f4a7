"""Training the tiny model the project ships: tokenizer, batches in streamvlm's layout, the loop."""
