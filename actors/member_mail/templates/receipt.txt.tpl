Subject: {{space}}: receipt for {{cad(cad_cents)}} CAD

Hello {{name}},

we received your dues payment:

% if sats is not None:
    amount        {{btc(sats)}} BTC
% end
    value         {{cad(cad_cents)}} CAD
% if rate:
    rate          {{rate}} CAD/BTC (when the payment was first seen)
% end
% if txid:
    transaction   {{txid}}:{{vout}}
% else:
    paid by       {{method}}
% end
% if paid_through:

Your dues are paid through {{paid_through}}.
% end

Thank you,
{{space}}
