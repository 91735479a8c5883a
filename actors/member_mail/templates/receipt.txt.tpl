Subject: {{space}}: receipt for {{cad(cad_cents)}} CAD

Hello {{name}},

we received your dues payment:

    amount        {{btc(sats)}} BTC
    value         {{cad(cad_cents)}} CAD
    rate          {{rate}} CAD/BTC (when the payment was first seen)
    transaction   {{txid}}:{{vout}}

Your dues are paid through {{paid_through}}.

Thank you,
{{space}}
