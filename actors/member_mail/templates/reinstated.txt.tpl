Subject: {{space}}: welcome back, {{name}}

Hello {{name}},

your {{space}} membership is active again, paid through {{paid_through}}.

Welcome back!
