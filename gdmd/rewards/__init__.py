"""Built-in rewards that need no checkpoint (the learned toy reward lives in gdmd.toy)."""
