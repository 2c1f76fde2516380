"""The blast radius of an edit: what a real `pulumi up` of prod would update, replace (delete-first
or create-first) and delete, and which hosts and mail it would take down.

    python -m blast_radius                   # the table for the edit catalogue
    python -m blast_radius --write-readme    # the same, into README.md

The program runs under mocks before and after each edit (capture.py); the providers' rules,
read from their sources at the pinned versions, say which changed input replaces what
(providers.py); plan.py makes the engine's decisions, harness.py follows replaced outputs into
their dependents and counts hosts down per role and the fate of the maildrops' mail volumes.
"""
