Subject: {{space}}: your membership has lapsed

Hello {{name}},

your {{space}} membership lapsed on {{since}}: your dues were not paid within the grace period.

A payment to your dues address reinstates it:

    {{address}}

We hope to see you back.
