"""The contribution economy: usage events, contribution-based pricing, a double-entry ledger
with group-committed postings, and invoices and statements read back from its legs."""
