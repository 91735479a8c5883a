Subject: {{space}}: your dues are overdue

Hello {{name}},

your {{space}} dues were due on {{due_date}}; {{cad(balance_cents)}} CAD is outstanding.

Pay to your dues address:

    {{address}}
    {{uri}}

If you think this is a mistake, reply to this mail.
