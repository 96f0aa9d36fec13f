"""The compatibility suite: transfers between the Flax models users already have."""
