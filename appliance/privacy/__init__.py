"""Privacy of what a box sends: clipping, Gaussian noise, the epsilon ledger, secure aggregation.

`clipping` bounds one box's contribution, `dp` adds the noise (locally on the box, or as a
share of distributed noise for the secure-aggregation path), `accountant` turns the noise
into an (epsilon, delta) guarantee with Google's `dp-accounting` RDP accountant and keeps the
box's ledger, `guard` is the edge daemon's single hook. `secagg/` masks updates pairwise.
What the guarantee covers is written down in docs/privacy.md.
"""
