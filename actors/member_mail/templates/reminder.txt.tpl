Subject: {{space}}: your dues are due in {{days}} day{{'' if days == 1 else 's'}}

Hello {{name}},

your {{space}} dues of {{cad(dues_cents)}} CAD are due on {{due_date}}, in {{days}} day{{'' if days == 1 else 's'}}.

Pay to your dues address:

    {{address}}
    {{uri}}
% if opt_out:

You can turn off these reminder mails: ask a member of the board.
% end
